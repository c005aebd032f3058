import net from "node:net";

/**
 * A TCP proxy in front of Postgres that a test can cut without a FIN or RST: `partition()`
 * stops forwarding in both directions and leaves every socket open, like a network partition
 * or a half-open connection. `heal()` resumes forwarding; `close()` destroys everything.
 * It also counts the transactions its clients ask for (`transactions()`).
 */
export interface TcpProxy {
  port: number;
  /** Connection string through the proxy (same credentials and database as `url`). */
  url: string;
  partition(): void;
  heal(): void;
  /** Sends new connections to `targetUrl`'s host and port from now on, as a provider's endpoint
   *  does after a failover. Open connections stay with the server they reached (they end with
   *  it, as behind a DNS switch). */
  retarget(targetUrl: string): void;
  /** Holds what servers send, and their closes, until release(); with `only`, on the
   *  connections whose start-up packet contains it (e.g. an application_name). */
  hold(only?: string): void;
  /** Delivers each connection's held bytes in one write, then its close if the server closed:
   *  the client reads an answer and the end of its session together, as a loaded client may. */
  release(): void;
  /** Sockets currently open through the proxy. */
  connections(): number;
  /** Transactions the clients sent so far: simple queries, and extended-protocol Syncs that
   *  close an Execute (a bare Sync, e.g. a health probe, starts no transaction). Exact, unlike
   *  pg_stat_database, which backends flush lazily. */
  transactions(): number;
  close(): Promise<void>;
}

export async function startProxy(targetUrl: string): Promise<TcpProxy> {
  let target = new URL(targetUrl);
  let cut = false;
  let transactions = 0;
  const pairs = new Set<[net.Socket, net.Socket]>();
  // Sockets whose peer closed while partitioned: the close could not cross the cut. After the
  // heal, the next packet from the survivor meets a reset, as on a real network.
  const doomed = new Set<net.Socket>();
  let held: ((pair: [net.Socket, net.Socket]) => boolean) | undefined;
  const startups = new Map<net.Socket, string>();
  // Per client socket, while held: the server's bytes, and whether the server closed.
  const waiting = new Map<net.Socket, { chunks: Buffer[]; closed: boolean }>();
  const heldFor = (client: net.Socket) => {
    const w = waiting.get(client) ?? { chunks: [], closed: false };
    waiting.set(client, w);
    return w;
  };
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 5432), target.hostname);
    const pair: [net.Socket, net.Socket] = [client, upstream];
    pairs.add(pair);
    const forward = (from: net.Socket, to: net.Socket) =>
      from.on("data", (chunk) => {
        if (!cut) to.write(chunk); // while partitioned, bytes vanish
      });
    forward(client, upstream);
    client.once("data", (chunk) => startups.set(client, chunk.toString("latin1")));
    client.on(
      "data",
      countTransactions((n) => (transactions += n)),
    );
    upstream.on("data", (chunk) => {
      if (cut) return;
      if (held?.(pair)) heldFor(client).chunks.push(chunk);
      else client.write(chunk);
    });
    const end = () => {
      pairs.delete(pair);
      startups.delete(client);
      if (!cut) {
        client.destroy();
        upstream.destroy();
      } else {
        for (const s of pair) if (!s.destroyed) doomed.add(s);
      }
    };
    client.on("close", end).on("error", () => {});
    upstream
      .on("close", () => {
        if (!held?.(pair) || client.destroyed) return end();
        heldFor(client).closed = true;
        pairs.delete(pair);
      })
      .on("error", () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  const url = new URL(targetUrl);
  url.hostname = "127.0.0.1";
  url.port = String(port);
  return {
    port,
    url: url.toString(),
    partition: () => {
      cut = true;
    },
    retarget: (next) => {
      target = new URL(next);
    },
    hold: (only) => {
      held = ([client]) => only === undefined || (startups.get(client) ?? "").includes(only);
    },
    release: () => {
      held = undefined;
      for (const [client, w] of waiting) {
        const data = Buffer.concat(w.chunks);
        if (w.closed) client.end(data);
        else if (data.length > 0) client.write(data);
      }
      waiting.clear();
    },
    heal: () => {
      cut = false;
      for (const s of doomed) s.destroy();
      doomed.clear();
    },
    connections: () => pairs.size,
    transactions: () => transactions,
    close: async () => {
      for (const [a, b] of pairs) {
        a.destroy();
        b.destroy();
      }
      pairs.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * Reads a client's side of the frontend protocol: the untyped start-up packets (an SSL or GSS
 * request may come first), then messages of a type byte and an int32 length that counts
 * itself. Reports each simple query ('Q') and each Sync ('S') that follows an Execute ('E').
 */
function countTransactions(add: (n: number) => void): (chunk: Buffer) => void {
  let buf = Buffer.alloc(0);
  let startup = true;
  let executed = false;
  return (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (startup) {
        if (buf.length < 8) return;
        const len = buf.readInt32BE(0);
        if (buf.length < len) return;
        const code = buf.readInt32BE(4);
        startup = code === 80877103 || code === 80877104; // SSLRequest, GSSENCRequest
        buf = buf.subarray(len);
        continue;
      }
      if (buf.length < 5) return;
      const len = buf.readInt32BE(1) + 1;
      if (buf.length < len) return;
      const type = String.fromCharCode(buf[0] ?? 0);
      if (type === "Q") add(1);
      else if (type === "E") executed = true;
      else if (type === "S" && executed) {
        executed = false;
        add(1);
      }
      buf = buf.subarray(len);
    }
  };
}
