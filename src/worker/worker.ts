import { EventEmitter } from "node:events";
import { Logger as WorkerLogger, parseCronItems, run, type Runner, type TaskList, type WorkerEvents } from "graphile-worker";
import pg from "pg";
import type { OutboundWebhookPolicy } from "../config.ts";
import type { Keyring } from "../crypto/keyring.ts";
import contactsRekey from "../../tasks/contacts__rekey.ts";
import ping from "../../tasks/herald__ping.ts";
import domainAuthenticate from "../../tasks/email_domains__authenticate.ts";
import domainVerify from "../../tasks/email_domains__verify.ts";
import providerTest from "../../tasks/provider_accounts__test.ts";
import deliverySend from "../../tasks/delivery__send.ts";
import deliveriesSweep from "../../tasks/deliveries__sweep.ts";
import messageCancel from "../../tasks/message__cancel.ts";
import messageFanOut from "../../tasks/message__fan_out.ts";
import releaseHeld from "../../tasks/tenant__release_held.ts";
import type { ProviderClients } from "../providers/send.ts";
import { graphileLogFactory, type Logger } from "../logger.ts";
import { registerWorkerProcess } from "./processes.ts";
import { setTenantContext } from "./tenant-context.ts";
import { setSendConcurrency } from "../messages/limiter.ts";
import { warmUpSending } from "../messages/deliver.ts";
import webhookSend from "../../tasks/webhook_deliveries__send.ts";

/** Every task Herald runs, registered explicitly: the file name is the identifier. */
export const taskList: TaskList = {
  herald__ping: ping as TaskList[string],
  contacts__rekey: contactsRekey as TaskList[string],
  provider_accounts__test: providerTest as TaskList[string],
  email_domains__authenticate: domainAuthenticate as TaskList[string],
  email_domains__verify: domainVerify as TaskList[string],
  message__fan_out: messageFanOut as TaskList[string],
  message__cancel: messageCancel as TaskList[string],
  delivery__send: deliverySend as TaskList[string],
  tenant__release_held: releaseHeld as TaskList[string],
  deliveries__sweep: deliveriesSweep as TaskList[string],
  webhook_deliveries__send: webhookSend as TaskList[string],
};

export interface WorkerHandle {
  runner: Runner;
  concurrency: number;
  isRunning(): boolean;
  stop(): Promise<void>;
}

export async function startWorker(options: {
  /** graphile-worker's own connection: it owns the job queue. */
  ownerUrl: string;
  /** Tenant work inside jobs: SET ROLE herald_worker per job. */
  authenticatorUrl: string;
  concurrency: number;
  /** Provider requests in flight in this process (HERALD_SEND_CONCURRENCY; default 200). */
  sendConcurrency?: number;
  /** Unwraps each job's tenant keys. */
  keyring: Keyring;
  /** SDK clients for sends (absent for a worker that never sends, e.g. `herald keys`). */
  providers?: ProviderClients;
  /** Outbound webhooks to tenants' endpoints (config.outboundWebhooks; absent for a worker that posts none). */
  webhooks?: OutboundWebhookPolicy;
  /** Only these tasks (and no cron), e.g. `herald keys`, which must not pick up sends; default: all of them. */
  tasks?: (keyof typeof taskList)[];
  logger: Logger;
}): Promise<WorkerHandle> {
  const tasks = options.tasks ? Object.fromEntries(options.tasks.map((name) => [name, taskList[name]!])) : taskList;
  const onIdleError = (error: Error) =>
    options.logger.warn({ err: { message: error.message } }, "idle worker connection failed");
  // Both pools are ours, with error handlers, and ended by us after the runner
  // stops: an idle connection dropped at shutdown must not crash the process.
  const queuePool = new pg.Pool({ connectionString: options.ownerUrl, max: options.concurrency + 2 });
  queuePool.on("error", onIdleError);
  // A checked-out client that loses its connection emits on itself, not on the pool.
  queuePool.on("connect", (client) => client.on("error", onIdleError));
  const tenantPool = new pg.Pool({ connectionString: options.authenticatorUrl, max: options.concurrency });
  tenantPool.on("error", onIdleError);
  // Pacing reservations: short statements of their own (src/messages/pacing.ts).
  const pacingPool = new pg.Pool({ connectionString: options.ownerUrl, max: Math.min(4, options.concurrency) });
  pacingPool.on("error", onIdleError);
  setSendConcurrency(options.sendConcurrency ?? 200);
  if (options.providers) warmUpSending(options.providers);
  const events: WorkerEvents = new EventEmitter();
  // Registered before the runner starts, so its worker ids are known and a
  // dead process's jobs are unlocked by whoever starts next.
  const registration = await registerWorkerProcess({ ownerUrl: options.ownerUrl, events, logger: options.logger });
  setTenantContext({
    pool: tenantPool,
    keyring: options.keyring,
    providers: options.providers,
    pacingPool,
    processId: registration.processId,
    webhooks: options.webhooks,
  });
  const started = run({
    events,
    pgPool: queuePool,
    concurrency: options.concurrency,
    // Herald's own shutdown handler stops the worker, then the API, then Postgres.
    noHandleSignals: true,
    pollInterval: 1000,
    // Given explicitly (otherwise it looks for a ./crontab file). graphile-worker
    // runs each tick once across all processes.
    parsedCronItems: parseCronItems(options.tasks ? [] : [{ task: "deliveries__sweep", match: "*/5 * * * *" }]),
    taskList: tasks,
    logger: new WorkerLogger(graphileLogFactory(options.logger.child({ component: "worker" }))),
  });
  const runner = await started.catch(async (error: unknown) => {
    // Not started: leave nothing registered or open behind.
    setTenantContext(undefined);
    await registration.stop();
    await Promise.all([tenantPool.end(), queuePool.end(), pacingPool.end()]);
    throw error;
  });
  let running = true;
  runner.promise.then(
    () => (running = false),
    (error: Error) => {
      running = false;
      options.logger.error({ err: { message: error.message } }, "the worker stopped unexpectedly");
    },
  );
  let stopped: Promise<void> | undefined;
  return {
    runner,
    concurrency: options.concurrency,
    isRunning: () => running,
    stop: () => {
      if (!stopped) {
        // From here a dropped registry connection is part of shutting down.
        registration.stopping();
        stopped = runner.stop().finally(async () => {
          setTenantContext(undefined);
          await registration.stop();
          await Promise.all([tenantPool.end(), queuePool.end(), pacingPool.end()]);
        });
      }
      return stopped;
    },
  };
}
