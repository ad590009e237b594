/* notify.h -- systemd's readiness protocol (sd_notify) without libsystemd.
 *
 * Under a Type=notify unit, systemd passes the path of a unix datagram
 * socket in $NOTIFY_SOCKET ("/run/systemd/notify", or "@name" for an
 * abstract socket). The server sends "READY=1" once it accepts
 * connections, "STOPPING=1" when it begins to shut down, "STATUS=..."
 * lines for `systemctl status`, and "WATCHDOG=1" keep-alives when the
 * unit sets WatchdogSec= (then $WATCHDOG_USEC is set). Without
 * $NOTIFY_SOCKET every call is a no-op, so the same binary runs
 * anywhere.
 *
 * Errors: cqr_notify returns 1 when there is no socket to tell, 0 when
 * the datagram was sent, CQR_EIO when sending failed (the caller logs;
 * a failed notification never stops the server).
 *
 * Threading: safe from any thread (each call uses its own socket).
 */
#ifndef CQR_NOTIFY_H
#define CQR_NOTIFY_H

#include <stdint.h>

/* Sends `state` (newline-separated VAR=value assignments) to
 * $NOTIFY_SOCKET. */
int cqr_notify(const char *state);

/* The watchdog interval asked by systemd in microseconds, or 0 when there
 * is none (or it is meant for another process: $WATCHDOG_PID). */
uint64_t cqr_notify_watchdog_usec(void);

#endif
