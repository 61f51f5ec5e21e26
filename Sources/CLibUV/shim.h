/* libuv for Swift: struct-prefix "inheritance" casts are done here, in C, not with memory rebinding. */
#include <uv.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <netinet/in.h>
static inline uv_stream_t *uvshim_stream(uv_tcp_t *t) { return (uv_stream_t *)t; }
static inline uv_handle_t *uvshim_tcp_handle(uv_tcp_t *t) { return (uv_handle_t *)t; }
static inline uv_handle_t *uvshim_timer_handle(uv_timer_t *t) { return (uv_handle_t *)t; }
static inline uv_handle_t *uvshim_signal_handle(uv_signal_t *t) { return (uv_handle_t *)t; }
static inline uv_handle_t *uvshim_async_handle(uv_async_t *t) { return (uv_handle_t *)t; }
static inline uv_handle_t *uvshim_check_handle(uv_check_t *t) { return (uv_handle_t *)t; }
static inline int uvshim_eagain(void) { return UV_EAGAIN; }
static inline int uvshim_eof(void) { return UV_EOF; }
static inline int uvshim_ecanceled(void) { return UV_ECANCELED; }
static inline uv_handle_t *uvshim_poll_handle(uv_poll_t *t) { return (uv_handle_t *)t; }
static inline uv_req_t *uvshim_getaddrinfo_req(uv_getaddrinfo_t *r) { return (uv_req_t *)r; }
/* glibc declares accept4 only under _GNU_SOURCE, which would make these headers differ from Glibc's module. */
extern int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
/* Accepts as a non-blocking, close-on-exec socket in one call. */
static inline int uvshim_accept_nonblocking(int fd) { return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }
