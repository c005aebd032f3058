import { expect, it } from "vitest";
import { ConfigError, InvalidArgumentError, UnknownKindError } from "../src/index.js";
import { useHoldfast } from "./support/db.js";

const t = useHoldfast({ job: {} });

async function counts(): Promise<{ tasks: number; keys: number; kinds: string }> {
  const { rows } = await t.db.pool.query(`select
    (select count(*)::int from holdfast.tasks) as tasks,
    (select count(*)::int from holdfast.keys) as keys,
    (select string_agg(kind || ':' || max_attempts || ':' || min_interval || ':' || batch_max, ',' order by kind)
       from holdfast.kinds) as kinds`);
  return rows[0];
}

const huge = { blob: "x".repeat(1024 * 1024 + 1) };

it("bad input from TypeScript: a typed error with a clear message, and nothing written", async () => {
  const before = await counts();
  const cases: Array<[() => Promise<unknown>, new (...a: never[]) => Error, RegExp]> = [
    [() => t.hf.enqueue("nope", { key: "k" }), UnknownKindError, /unknown kind 'nope'/],
    [() => t.hf.enqueue("job", { key: "k", maxAttempts: 0 }), InvalidArgumentError, /maxAttempts/],
    [() => t.hf.enqueue("job", { key: "k", payload: huge }), InvalidArgumentError, /1 MiB/],
    [() => t.hf.enqueue("job", { key: "" }), InvalidArgumentError, /key/],
    [() => t.hf.defineKind("job", { minInterval: -5 }), InvalidArgumentError, /minInterval/],
    [() => t.hf.defineKind("job", { minInterval: "-1 hour" }), InvalidArgumentError, /negative/],
    [() => t.hf.defineKind("job", { minInterval: "soon" }), InvalidArgumentError, /interval/],
    [() => t.hf.defineKind("job", { maxAttempts: 0 }), InvalidArgumentError, /maxAttempts/],
    [() => t.hf.defineKind("job", { batch: { max: 0 } }), InvalidArgumentError, /batch.max/],
    [() => t.hf.defineKind("bad kind!"), InvalidArgumentError, /invalid kind name/],
    [() => t.hf.retry(1, { extraAttempts: 0 }), InvalidArgumentError, /extraAttempts/],
  ];
  for (const [call, Type, message] of cases) {
    const err = await call().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Type);
    expect((err as Error).message).toMatch(message);
  }
  expect(() =>
    t.hf.worker({ handlers: { job: { handler: async () => {}, maxAttempts: 0 } } }),
  ).toThrow(ConfigError);
  expect(() =>
    t.hf.worker({ handlers: { job: { handler: async () => {}, minInterval: -1 } } }),
  ).toThrow(ConfigError);
  expect(await counts()).toEqual(before);
});

it("bad input from SQL: SQLSTATE HF001/HF002, and nothing written", async () => {
  const before = await counts();
  const big = JSON.stringify(huge);
  const cases: Array<[string, unknown[], string]> = [
    ["select holdfast.enqueue('nope', 'k')", [], "HF001"],
    ["select holdfast.enqueue('job', 'k', max_attempts => 0)", [], "HF002"],
    ["select holdfast.enqueue('job', 'k', $1::jsonb)", [big], "HF002"],
    ["select holdfast.enqueue('job', 'k', on_dedupe => 'sometimes')", [], "HF002"],
    ["select holdfast.define_kind('job', min_interval => '-1 hour')", [], "HF002"],
    ["select holdfast.define_kind('job', max_attempts => 0)", [], "HF002"],
    ["select holdfast.define_kind('job', batch_max => 1001)", [], "HF002"],
    ["select holdfast.retry(424242)", [], "HF003"],
    ["select holdfast.cancel(424242)", [], "HF003"],
  ];
  for (const [text, values, code] of cases) {
    const err = await t.db.pool.query(text, values).then(
      () => undefined,
      (e: { code?: string }) => e,
    );
    expect({ text, code: err?.code }).toEqual({ text, code });
  }
  expect(await counts()).toEqual(before);
});
