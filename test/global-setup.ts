import type { TestProject } from "vitest/node";
import { startServer } from "./support/postgres.js";

declare module "vitest" {
  export interface ProvidedContext {
    adminUrl: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const server = await startServer();
  project.provide("adminUrl", server.url);
  return async () => {
    await server.stop();
  };
}
