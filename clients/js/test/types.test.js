// The TypeScript declarations compile, and describe the API as used.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { test } from "node:test";

test("drs-client.d.ts type-checks a program that uses the whole API", () => {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  const run = spawnSync(process.execPath, [tsc, "--noEmit", "--strict", "--target", "es2022", "--lib", "es2022,dom",
    "--module", "nodenext", "--moduleResolution", "nodenext", "test/types-check.ts"], { encoding: "utf8" });
  assert.equal(run.status, 0, run.stdout + run.stderr);
});
