# The server: everything but main() is the static library cqr_server, so
# the unit tests and a libFuzzer target can drive frames and RPCs without
# sockets; cqrps-server is main.c on top of it.
add_library(cqr_server STATIC
  ${CMAKE_CURRENT_SOURCE_DIR}/log.c
  ${CMAKE_CURRENT_SOURCE_DIR}/config.c
  ${CMAKE_CURRENT_SOURCE_DIR}/frame.c
  ${CMAKE_CURRENT_SOURCE_DIR}/registry.c
  ${CMAKE_CURRENT_SOURCE_DIR}/phase.c
  ${CMAKE_CURRENT_SOURCE_DIR}/rpc.c
  ${CMAKE_CURRENT_SOURCE_DIR}/wire.c
  ${CMAKE_CURRENT_SOURCE_DIR}/conn.c
  ${CMAKE_CURRENT_SOURCE_DIR}/opstats.c
  ${CMAKE_CURRENT_SOURCE_DIR}/metrics.c
  ${CMAKE_CURRENT_SOURCE_DIR}/notify.c
  ${CMAKE_CURRENT_SOURCE_DIR}/auth.c
  ${CMAKE_CURRENT_SOURCE_DIR}/ckpt.c
)
# The metrics/health endpoint's HTTP server (Debian: libmicrohttpd-dev).
pkg_check_modules(MHD REQUIRED IMPORTED_TARGET libmicrohttpd)
target_include_directories(cqr_server PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(cqr_server PUBLIC cqr_engine cqr_store cqr_proto
                                        PkgConfig::UV
                                        PkgConfig::MHD Threads::Threads)
set_target_properties(cqr_server PROPERTIES POSITION_INDEPENDENT_CODE ON)

add_executable(cqrps-server ${CMAKE_CURRENT_SOURCE_DIR}/main.c)
target_link_libraries(cqrps-server PRIVATE cqr_server)
install(TARGETS cqrps-server RUNTIME DESTINATION bin)
