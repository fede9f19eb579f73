/** Connection strings derived from one server URL: same host and port, another role or database. */

export const ROLES = {
  owner: "herald_owner",
  authenticator: "herald_authenticator",
  member: "herald_member",
  admin: "herald_admin",
  worker: "herald_worker",
} as const;

export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = "/" + encodeURIComponent(database);
  return u.toString();
}

export function withRole(url: string, role: string, password: string | undefined): string {
  const u = new URL(url);
  u.username = encodeURIComponent(role);
  u.password = password ? encodeURIComponent(password) : "";
  return u.toString();
}

export function databaseName(url: string): string {
  const name = decodeURIComponent(new URL(url).pathname.replace(/^\//, ""));
  if (!name) throw new Error("DATABASE_URL must name a database, e.g. postgres://user@host:5432/herald");
  return name;
}

/** The URL with its password masked, for logs. */
export function redactUrl(url: string): string {
  const u = new URL(url);
  if (u.password) u.password = "***";
  return u.toString();
}
