// Compiled (not run) by types.test.js: the declarations describe the API
// as the tests use it.
import { connect, Client, RemoteError, Timeout, Stream } from "../drs-client.js";

export async function uses(url: string): Promise<number> {
  const c: Client = await connect(url, { token: "t", name: "n", timeout: 100, backoff: [10, 100], onConnect: () => {} });
  const sum: number = await c.call<number>("add", { a: 1, b: 2 }, { timeout: 50, signal: new AbortController().signal });
  const reached: number = await c.publish("t", 1, { confirm: true });
  const nothing: undefined = await c.publish("t", 1);
  const items: Stream<number> = c.stream<number>("count", { n: 3 }, { window: 2 });
  for await (const n of items) {
    const m: number = n;
    void m;
  }
  c.on("x", (body) => body).on("y", async () => 1);
  await c.subscribe("a.*", () => {}, { retroactive: true });
  await c.subscribe("b.>", (body: unknown, topic: string) => { topic.startsWith("b."); });
  const resumed: boolean = await c.identify("me");
  try {
    await c.call("fail");
  } catch (e) {
    if (e instanceof RemoteError) void e.body;
    if (e instanceof Timeout) void e.message;
  }
  c.close();
  void nothing;
  void resumed;
  return sum + reached;
}
