/**
 * Every limit the GraphQL endpoint enforces, in one place (documented in
 * docs/limits.md). Together they bound the work and memory one request can
 * ask of the API process and PostgreSQL, and how much of the pool one tenant
 * can hold.
 */

/** Rows a connection or list returns when the operation gives neither `first` nor `last`. */
export const DEFAULT_PAGE_SIZE = 50;
/** Largest `first`/`last` accepted. */
export const MAX_PAGE_SIZE = 1000;
/**
 * Largest estimated node count of an operation: the sum, over every
 * connection and list it selects, of the product of the page sizes enclosing
 * it (aliases and fragment spreads each counted). Building a response costs
 * the API process roughly 15–60 µs of CPU per node (more when nested), in
 * long synchronous stretches that every other request waits behind: 5,000
 * nodes keeps those stretches to a fraction of a second.
 */
export const MAX_ESTIMATED_NODES = 5_000;

/** Selection sets deep, and lists nested in lists. */
export const MAX_DEPTH = 12;
export const MAX_LIST_DEPTH = 4;
/** Field selections per operation, fragments counted each time they are spread. */
export const MAX_SELECTIONS = 1000;
/** Introspection (`__schema`, `__type`): deep enough for `getIntrospectionQuery({ typeDepth: MAX_TYPE_DEPTH })`. */
export const MAX_TYPE_DEPTH = 12;
export const MAX_INTROSPECTION_DEPTH = 6 + MAX_TYPE_DEPTH;

/**
 * Response budget, which holds even when an estimate is wrong: the data one
 * request may fetch from PostgreSQL (approximate bytes of the rows), and the
 * time its execution may take before no further query starts.
 */
export const MAX_FETCHED_BYTES = 8 * 1024 * 1024;
export const EXECUTION_TIMEOUT_MS = 10_000;
/**
 * Operations estimated above `LARGE_OPERATION_NODES` take turns: at most
 * `LARGE_OPERATIONS_AT_ONCE` run at a time per API process, across tenants; the
 * next waits up to `LARGE_OPERATION_WAIT_MS`, then gets SERVER_BUSY.
 */
export const LARGE_OPERATION_NODES = 1_000;
export const LARGE_OPERATIONS_AT_ONCE = 1;
export const LARGE_OPERATION_WAIT_MS = 5_000;
/** PostgreSQL's own bound on each statement (`statement_timeout`, transaction-local). */
export const STATEMENT_TIMEOUT = { member: "10s", admin: "60s" } as const;

/**
 * GraphQL requests one tenant may have in flight in one API process (each can
 * hold a pool connection, and takes turns on its one CPU), how many more may
 * wait for a slot, and for how long.
 */
export const TENANT_MAX_IN_FLIGHT = 2;
export const TENANT_MAX_QUEUED = 8;
export const TENANT_QUEUE_WAIT_MS = 2_000;
