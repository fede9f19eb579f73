import twilio from "twilio";
import RequestClient from "twilio/lib/base/RequestClient.js";

/**
 * The real Twilio SDK, optionally pointed at Herald's sandbox: every request
 * the SDK would send to https://*.twilio.com goes to `<sandboxUrl>/twilio`
 * instead, with the same path, form body and Basic auth.
 */

class SandboxRequestClient extends RequestClient {
  readonly #base: string;
  constructor(base: string) {
    super();
    this.#base = base.replace(/\/$/, "");
  }
  override request<T>(opts: RequestClient.RequestOptions<T>) {
    const url = new URL(opts.uri);
    return super.request({ ...opts, uri: `${this.#base}/twilio${url.pathname}${url.search}` });
  }
}

export type TwilioClient = ReturnType<typeof twilio>;

export function createTwilioClient(credentials: { accountSid: string; authToken: string }, sandboxUrl?: string): TwilioClient {
  return twilio(credentials.accountSid, credentials.authToken, sandboxUrl ? { httpClient: new SandboxRequestClient(sandboxUrl) } : {});
}
