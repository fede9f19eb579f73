/**
 * Imported first by every entry point: settles environment defaults that
 * libraries read while their modules load (before `main` runs).
 */
import { isDevelopment } from "./config.ts";

// Grafast reads GRAPHILE_ENV at import: development mode adds checks and
// readable errors. It follows Herald's own notion of development (config.ts).
process.env.GRAPHILE_ENV ??= isDevelopment(process.env) ? "development" : "production";
