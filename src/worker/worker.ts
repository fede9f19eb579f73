import { EventEmitter } from "node:events";
import {
  Logger as WorkerLogger,
  parseCronItems,
  run,
  type Runner,
  type TaskList,
  type WorkerEvents,
} from "graphile-worker";
import { createPool } from "../db/availability.ts";
import type { WorkerPools } from "../db/budget.ts";
import type { OutboundWebhookPolicy } from "../config.ts";
import type { Keyring } from "../crypto/keyring.ts";
import contactsRekey from "../../tasks/contacts__rekey.ts";
import ping from "../../tasks/herald__ping.ts";
import domainAuthenticate from "../../tasks/email_domains__authenticate.ts";
import domainVerify from "../../tasks/email_domains__verify.ts";
import providerTest from "../../tasks/provider_accounts__test.ts";
import servicesSync from "../../tasks/messaging_services__sync.ts";
import providerSyncContent from "../../tasks/provider_accounts__sync_content.ts";
import deliverySend from "../../tasks/delivery__send.ts";
import deliveriesSweep from "../../tasks/deliveries__sweep.ts";
import checkStatus, { STATUS_CHECK_JOB } from "../../tasks/deliveries__check_status.ts";
import messageCancel from "../../tasks/message__cancel.ts";
import messageFanOut from "../../tasks/message__fan_out.ts";
import releaseHeld from "../../tasks/tenant__release_held.ts";
import type { ProviderClients } from "../providers/clients.ts";
import { graphileLogFactory, type Logger } from "../logger.ts";
import { registerWorkerProcess } from "./processes.ts";
import { setTenantContext, type StatusCheckPolicy } from "./tenant-context.ts";
import { setSendConcurrency } from "../messages/limiter.ts";
import { warmUpSending } from "../messages/deliver.ts";
import webhookSend from "../../tasks/webhook_deliveries__send.ts";
import providerReportsSweep from "../../tasks/provider_reports__sweep.ts";
import senderNumbersVerify from "../../tasks/sender_numbers__verify.ts";
import numberRequestsRun from "../../tasks/number_requests__run.ts";
import senderNumbersRecheck from "../../tasks/sender_numbers__recheck.ts";

/** Every task Herald runs, registered explicitly: the file name is the identifier. */
export const taskList: TaskList = {
  herald__ping: ping as TaskList[string],
  contacts__rekey: contactsRekey as TaskList[string],
  provider_accounts__test: providerTest as TaskList[string],
  provider_accounts__sync_content: providerSyncContent as TaskList[string],
  email_domains__authenticate: domainAuthenticate as TaskList[string],
  email_domains__verify: domainVerify as TaskList[string],
  messaging_services__sync: servicesSync as TaskList[string],
  message__fan_out: messageFanOut as TaskList[string],
  message__cancel: messageCancel as TaskList[string],
  delivery__send: deliverySend as TaskList[string],
  tenant__release_held: releaseHeld as TaskList[string],
  deliveries__sweep: deliveriesSweep as TaskList[string],
  deliveries__check_status: checkStatus as TaskList[string],
  webhook_deliveries__send: webhookSend as TaskList[string],
  provider_reports__sweep: providerReportsSweep as TaskList[string],
  sender_numbers__verify: senderNumbersVerify as TaskList[string],
  number_requests__run: numberRequestsRun as TaskList[string],
  sender_numbers__recheck: senderNumbersRecheck as TaskList[string],
};

export interface WorkerHandle {
  runner: Runner;
  concurrency: number;
  isRunning(): boolean;
  /** Whether this process holds its worker registration (false while it reconnects after losing the database). */
  isRegistered(): boolean;
  stop(): Promise<void>;
}

/** Pool sizes when no budget is given: enough that no job ever waits for a connection. */
const unbudgeted = (concurrency: number): WorkerPools => ({
  queue: concurrency + 2,
  tenant: concurrency,
  pacing: Math.min(4, concurrency),
  registry: 2,
});

/** How long a job's connection request waits out a database that is away, before the job fails and is retried. */
const WAIT_FOR_SERVER_MS = 30_000;

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
  /** Pool sizes from the process's connection budget (src/db/budget.ts); without it, sized from the concurrency. */
  pools?: WorkerPools;
  /** The process's whole budget (HERALD_DB_CONNECTIONS), announced to processes starting later. */
  budget?: number;
  /** How often `sent` deliveries without a final status are looked up at the provider (none: never). */
  statusCheck?: StatusCheckPolicy;
  /** The worker stopped for good (not by stop()): the process must exit non-zero and be restarted. */
  onFatal?: (error: Error) => void;
  logger: Logger;
}): Promise<WorkerHandle> {
  const tasks = options.tasks ? Object.fromEntries(options.tasks.map((name) => [name, taskList[name]!])) : taskList;
  const sizes = options.pools ?? unbudgeted(options.concurrency);
  const { logger } = options;
  // Our pools, with error handlers on idle and checked-out clients, waiting
  // out a database that restarts; ended by us after the runner stops.
  const queuePool = createPool({
    connectionString: options.ownerUrl,
    max: sizes.queue,
    name: "queue",
    logger,
    waitForServerMs: WAIT_FOR_SERVER_MS,
  });
  const tenantPool = createPool({
    connectionString: options.authenticatorUrl,
    max: sizes.tenant,
    name: "tenant",
    logger,
    waitForServerMs: WAIT_FOR_SERVER_MS,
  });
  // Pacing reservations: short statements of their own (src/messages/pacing.ts).
  const pacingPool = createPool({
    connectionString: options.ownerUrl,
    max: sizes.pacing,
    name: "pacing",
    logger,
    waitForServerMs: WAIT_FOR_SERVER_MS,
  });
  setSendConcurrency(options.sendConcurrency ?? 200);
  if (options.providers) warmUpSending(options.providers);
  const events: WorkerEvents = new EventEmitter();
  // Registered before the runner starts, so its worker ids are known and a
  // dead process's jobs are unlocked by whoever starts next.
  const registration = await registerWorkerProcess({
    ownerUrl: options.ownerUrl,
    events,
    logger,
    budget: options.budget,
  });
  setTenantContext({
    pool: tenantPool,
    keyring: options.keyring,
    providers: options.providers,
    pacingPool,
    processId: registration.processId,
    webhooks: options.webhooks,
    statusCheck: options.statusCheck,
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
    parsedCronItems: parseCronItems(
      options.tasks
        ? []
        : [
            { task: "deliveries__sweep", match: "*/5 * * * *" },
            { task: "provider_reports__sweep", match: "* * * * *" },
            { task: "sender_numbers__recheck", match: "23 * * * *" },
          ],
    ),
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
  // Overdue statuses: every process queues the check at the interval, under
  // one job key (one pending run across all processes; a run keeps its time).
  const statusCheck = options.statusCheck;
  const statusTimer =
    statusCheck && !options.tasks
      ? setInterval(() => {
          runner
            .addJob("deliveries__check_status", {}, { ...STATUS_CHECK_JOB, jobKeyMode: "preserve_run_at" })
            .catch((error: Error) =>
              logger.warn({ err: { message: error.message } }, "could not queue the status check"),
            );
        }, statusCheck.intervalMs)
      : undefined;
  statusTimer?.unref();
  let running = true;
  runner.promise.then(
    () => (running = false),
    (error: Error) => {
      running = false;
      if (stopped) return;
      logger.error({ err: { message: error.message } }, "the worker stopped unexpectedly");
      options.onFatal?.(error);
    },
  );
  let stopped: Promise<void> | undefined;
  return {
    runner,
    concurrency: options.concurrency,
    isRunning: () => running,
    isRegistered: () => registration.state() === "registered",
    stop: () => {
      if (!stopped) {
        // From here a dropped registry connection is part of shutting down.
        registration.stopping();
        clearInterval(statusTimer);
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
