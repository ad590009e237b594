# The checkpoint store (store.c over RocksDB): a library of its own so that
# the server, the persistence tests and the benchmarks link the same code.
# Included from server/CMakeLists.txt (and, harmlessly, from server.cmake).
if(TARGET cqr_store)
  return()
endif()
add_library(cqr_store STATIC ${CMAKE_CURRENT_LIST_DIR}/store.c
                             ${CMAKE_CURRENT_LIST_DIR}/manifest.c)
target_include_directories(cqr_store PUBLIC ${CMAKE_CURRENT_LIST_DIR}
                                            ${ROCKSDB_INCLUDE})
target_link_libraries(cqr_store PUBLIC cqr_engine ${ROCKSDB_LIB})
set_target_properties(cqr_store PROPERTIES POSITION_INDEPENDENT_CODE ON)
