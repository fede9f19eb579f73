import type http from "node:http";

export class PortInUseError extends Error {
  override name = "PortInUseError";
}

/** Resolves once the server listens on `port`; a port in use is a PortInUseError that says what to do. */
export function listen(server: http.Server, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => {
      reject(
        error.code === "EADDRINUSE"
          ? new PortInUseError(
              `Port ${port} is already in use. Stop whatever uses it, or start Herald with PORT=<another port>.`,
            )
          : error,
      );
    };
    server.once("error", onError);
    server.listen(port, () => {
      server.off("error", onError);
      resolve();
    });
  });
}
