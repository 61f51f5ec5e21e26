/* libpg_query: PostgreSQL's own parser, for fingerprints, normalized text and schema detection. */
#include <pg_query.h>
