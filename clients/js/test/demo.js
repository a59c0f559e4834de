// Starts the drs demo server for the tests: DRS_DEMO_SERVER names its
// binary (cargo test -p examples --test clients sets it, with DRS_TLS_CA,
// DRS_TLS_CERT and DRS_TLS_KEY for the TLS tests).

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

export const DEMO = process.env.DRS_DEMO_SERVER;
const LIMIT = 30000;
const LISTENERS = new Set(["--tcp", "--ws", "--ipc"]);

export class Demo {
  constructor(args) {
    this.store = mkdtempSync(join(tmpdir(), "drs-js-store-"));
    this.args = [...args, "--store", this.store];
    this.listening = [];
  }

  static async start(...args) {
    const d = new Demo(args);
    await d.start();
    return d;
  }

  async start() {
    this.proc = spawn(DEMO, this.args, { stdio: ["ignore", "pipe", "ignore"], env: { ...process.env, RUST_LOG: "warn" } });
    const wanted = this.args.filter((a) => LISTENERS.has(a)).length;
    this.listening = [];
    const lines = createInterface({ input: this.proc.stdout });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("demo_server did not announce its listeners")), LIMIT);
      lines.on("line", (line) => {
        if (!line.startsWith("listening ")) return;
        // listening KIND://ADDR[?protocol=…]
        const url = line.slice("listening ".length);
        const at = url.indexOf("://");
        this.listening.push([url.slice(0, at), url.slice(at + 3).split("?")[0]]);
        if (this.listening.length === wanted) { clearTimeout(timer); resolve(); }
      });
      this.proc.once("exit", (code) => { clearTimeout(timer); reject(new Error(`demo_server exited with ${code}`)); });
    });
  }

  addr(kind, n = 0) {
    return this.listening.filter(([k]) => k === kind)[n][1];
  }

  /** Makes the next start() listen where this one did. */
  pin() {
    const bound = this.listening.map(([, a]) => a);
    this.args = this.args.map((a, i) => (i > 0 && LISTENERS.has(this.args[i - 1]) ? bound.shift() : a));
  }

  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    const exited = new Promise((r) => this.proc.once("exit", r));
    this.proc.kill("SIGKILL");
    await exited;
  }

  async restart() {
    this.pin();
    await this.stop();
    await this.start();
  }

  async dispose() {
    await this.stop();
    rmSync(this.store, { recursive: true, force: true });
  }
}

/** Waits until `cond()` is truthy (it may be async), within `limit` ms. */
export async function waitFor(cond, what, limit = 10000) {
  const deadline = Date.now() + limit;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
