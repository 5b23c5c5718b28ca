/* Jest helper: a private in-memory Azurite on 127.0.0.1 and a free port, plus an AzureStore
 * talking to it. Start it in beforeAll and stop it in afterAll:
 *   let az: TestAzurite;
 *   beforeAll(async () => { az = await startTestAzurite(); });
 *   afterAll(() => az.stop()); */

import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { AzureStore } from '../../lib/store/azure';
import type { StoreOptions } from '../../lib/store/credentials';

export interface TestAzurite {
  readonly azurite: RunningAzurite;
  /** A store on it (connection-string credentials). */
  readonly store: AzureStore;
  /** The options `store` was made with, to make more stores on the same Azurite. */
  readonly storeOptions: StoreOptions;
  /** Closes the store and stops Azurite. */
  stop(): Promise<void>;
}

export async function startTestAzurite(options: { maxTries?: number; tryTimeoutMs?: number } = {}): Promise<TestAzurite> {
  const azurite = await startAzurite({ inMemory: true, host: '127.0.0.1' });
  const storeOptions: StoreOptions = {
    credentials: { kind: 'connectionString', connectionString: azurite.connectionString },
    maxTries: options.maxTries ?? 3,
    tryTimeoutMs: options.tryTimeoutMs ?? 30_000,
  };
  const store = new AzureStore(storeOptions);
  return {
    azurite,
    store,
    storeOptions,
    async stop() {
      await store.close();
      await azurite.stop();
    },
  };
}
