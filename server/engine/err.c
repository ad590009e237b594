#include "err.h"

const char *cqr_strerror(int err)
{
    switch (err) {
#define CQR_ERR_MSG_(name, num, msg) case -(num): return msg;
        CQR_ERRNO_MAP(CQR_ERR_MSG_)
#undef CQR_ERR_MSG_
    }
    return "unknown error";
}

const char *cqr_errname(int err)
{
    switch (err) {
#define CQR_ERR_NAME_(name, num, msg) case -(num): return #name;
        CQR_ERRNO_MAP(CQR_ERR_NAME_)
#undef CQR_ERR_NAME_
    }
    return "UNKNOWN";
}
