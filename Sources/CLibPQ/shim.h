/* libpq for the command-line tools and tests (blocking: never on a loop thread). */
#include <libpq-fe.h>
