import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ConfigError,
  ConnectionError,
  Holdfast,
  InvalidArgumentError,
  UnknownKindError,
} from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { freePort } from "./support/postgres.js";

let db: TestDatabase;
let hf: Holdfast;

beforeAll(async () => {
  db = await freshDatabase();
  hf = new Holdfast({ pool: db.pool, logger: silent });
  await hf.defineKind("job");
});

afterAll(async () => {
  await db.drop();
});

async function taskCount(): Promise<number> {
  return (await db.pool.query("select count(*)::int as n from holdfast.tasks")).rows[0].n;
}

describe("bad options, payloads and connections get a typed error and write nothing", () => {
  it("enqueue of an unknown kind", async () => {
    await expect(hf.enqueue("no-such-kind", { key: "k" })).rejects.toBeInstanceOf(UnknownKindError);
    expect(await taskCount()).toBe(0);
  });

  it("enqueue with an empty or missing key", async () => {
    await expect(hf.enqueue("job", { key: "" })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(hf.enqueue("job", {} as { key: string })).rejects.toMatchObject({ code: "HF002" });
    expect(await taskCount()).toBe(0);
  });

  it("enqueue with a payload JSON cannot represent", async () => {
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    await expect(hf.enqueue("job", { key: "k", payload: circular })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    await expect(hf.enqueue("job", { key: "k", payload: { n: 10n } })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    await expect(hf.enqueue("job", { key: "k", payload: () => 1 })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    expect(await taskCount()).toBe(0);
  });

  it("a worker with no handlers, a bad kind name, a handler that is not a function, or a bad concurrency or prefetch", () => {
    expect(() => hf.worker({ handlers: {} })).toThrow(ConfigError);
    expect(() => hf.worker({ handlers: { "bad kind!": () => {} } })).toThrow(ConfigError);
    expect(() => hf.worker({ handlers: { job: 42 as unknown as () => void } })).toThrow(
      ConfigError,
    );
    expect(() => hf.worker({ handlers: { job: () => {} }, concurrency: 0 })).toThrow(ConfigError);
    for (const prefetch of [-1, 1.5, 1001])
      expect(() => hf.worker({ handlers: { job: () => {} }, prefetch })).toThrow(
        /`prefetch` must be an integer from 0 to 1000/,
      );
  });

  it("a malformed connection string, or neither/both of connectionString and pool", () => {
    expect(() => new Holdfast({ connectionString: "not a url" })).toThrow(ConfigError);
    expect(() => new Holdfast({ connectionString: "mysql://x@localhost/db" })).toThrow(ConfigError);
    expect(() => new Holdfast({})).toThrow(ConfigError);
    expect(() => new Holdfast({ connectionString: db.url, pool: new pg.Pool() })).toThrow(
      ConfigError,
    );
    expect(
      () => new Holdfast({ connectionString: db.url, sessionConnectionString: "mysql://x@h/db" }),
    ).toThrow(/sessionConnectionString/);
    expect(() => new Holdfast({ pool: db.pool, sessionConnectionString: "" })).toThrow(ConfigError);
  });

  it("an unreachable session URL: migrate and worker.start fail with ConnectionError, enqueue works through the pool", async () => {
    const port = await freePort(); // nothing listens there
    const split = new Holdfast({
      pool: db.pool,
      sessionConnectionString: `postgres://u:p@127.0.0.1:${port}/db`,
      logger: silent,
    });
    await expect(split.migrate()).rejects.toBeInstanceOf(ConnectionError);
    await expect(split.worker({ handlers: { job: () => {} } }).start()).rejects.toBeInstanceOf(
      ConnectionError,
    );
    const { id } = await split.enqueue("job", { key: "split" });
    expect(id).toBeGreaterThan(0);
    expect(await split.cancel(id)).toBe(true);
    await split.close();
  });

  it("an unreachable database: enqueue, migrate and worker.start fail with ConnectionError", async () => {
    const port = await freePort(); // nothing listens there
    const down = new Holdfast({
      connectionString: `postgres://u:p@127.0.0.1:${port}/db`,
      logger: silent,
    });
    await expect(down.enqueue("job", { key: "k" })).rejects.toBeInstanceOf(ConnectionError);
    await expect(down.migrate()).rejects.toBeInstanceOf(ConnectionError);
    await expect(down.worker({ handlers: { job: () => {} } }).start()).rejects.toBeInstanceOf(
      ConnectionError,
    );
    await down.close();
  });
});
