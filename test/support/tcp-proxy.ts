import net from "node:net";

/**
 * A TCP proxy in front of Postgres that a test can cut without a FIN or RST: `partition()`
 * stops forwarding in both directions and leaves every socket open, like a network partition
 * or a half-open connection. `heal()` resumes forwarding; `close()` destroys everything.
 */
export interface TcpProxy {
  port: number;
  /** Connection string through the proxy (same credentials and database as `url`). */
  url: string;
  partition(): void;
  heal(): void;
  /** Sockets currently open through the proxy. */
  connections(): number;
  close(): Promise<void>;
}

export async function startProxy(targetUrl: string): Promise<TcpProxy> {
  const target = new URL(targetUrl);
  const targetPort = Number(target.port || 5432);
  const targetHost = target.hostname;
  let cut = false;
  const pairs = new Set<[net.Socket, net.Socket]>();
  // Sockets whose peer closed while partitioned: the close could not cross the cut. After the
  // heal, the next packet from the survivor meets a reset, as on a real network.
  const doomed = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, targetHost);
    const pair: [net.Socket, net.Socket] = [client, upstream];
    pairs.add(pair);
    const forward = (from: net.Socket, to: net.Socket) =>
      from.on("data", (chunk) => {
        if (!cut) to.write(chunk); // while partitioned, bytes vanish
      });
    forward(client, upstream);
    forward(upstream, client);
    const end = () => {
      pairs.delete(pair);
      if (!cut) {
        client.destroy();
        upstream.destroy();
      } else {
        for (const s of pair) if (!s.destroyed) doomed.add(s);
      }
    };
    client.on("close", end).on("error", () => {});
    upstream.on("close", end).on("error", () => {});
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
    heal: () => {
      cut = false;
      for (const s of doomed) s.destroy();
      doomed.clear();
    },
    connections: () => pairs.size,
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
