/* End to end: signing in as Azure users do. Microsoft Entra ID cannot be reached here, so
 * its sign-in is tested against a local stand-in (test/support/entra-stub.ts) that answers
 * a service principal's token request as Entra ID does, with DefaultAzureCredential (only
 * its environment credential) pointed at it by AZURE_AUTHORITY_HOST; the blobs are served
 * by Azurite over HTTPS with its basic OAuth, which checks the token's issuer, audience and
 * lifetime. A credential without the needed rights gets one line naming what it lacks.
 * Needs root, /dev/fuse and openssl. */

import { AccountSASPermissions, AccountSASResourceTypes, AccountSASServices, StorageSharedKeyCredential, generateAccountSASQueryParameters } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { AZURITE_ACCOUNT, startAzurite, type RunningAzurite } from '../../lib/azurite';
import { selfSignedCert, servicePrincipalEnv, startEntraStub, type EntraStub, type TlsFiles } from '../support/entra-stub';
import { cliEnv, isMounted, makeTempDir, newMountpoint, randomData, removeTempDirs, runCli, sh, sha256, sha256OfFile, startMount, stopAllMounts } from '../support/mount';
import { containerOn, freshCacheDir, ok, scratchFile, unmountClean } from '../support/write-helpers';

let tls: TlsFiles;
let stub: EntraStub;
let secure: RunningAzurite;
let plain: RunningAzurite;

beforeAll(async () => {
  tls = await selfSignedCert(await makeTempDir('blobdisk-tls-'));
  stub = await startEntraStub(tls);
  secure = await startAzurite({ inMemory: true, tls });
  plain = await startAzurite({ inMemory: true });
  await containerOn(plain.connectionString, 'sas');
});

afterAll(async () => {
  await stopAllMounts();
  await secure?.stop();
  await plain?.stop();
  await stub?.stop();
  await removeTempDirs();
});

/** Flags and environment of a mount that signs in with Entra ID through the stub. */
async function entraMount(secret?: string): Promise<{ args: string[]; env: NodeJS.ProcessEnv }> {
  return {
    args: ['--auth', 'entra', '--account', AZURITE_ACCOUNT, '--endpoint', secure.endpoint, '--cache-dir', await freshCacheDir(), '--log-level', 'warn'],
    env: cliEnv(servicePrincipalEnv(stub, tls, secret), await makeTempDir()),
  };
}

describe('Microsoft Entra ID (DefaultAzureCredential)', () => {
  it('a service principal signs in, and what it writes is read back by a new mount with an empty cache', async () => {
    const before = stub.tokens();
    const data = randomData(5 * 1024 * 1024 + 4096);
    const src = await scratchFile('entra');
    await fsp.writeFile(src, data);

    const first = await entraMount();
    const writer = await startMount(first.args, { env: first.env });
    ok(await sh('mkdir', [path.join(writer.mnt, 'entra')]), 'mkdir of a container');
    ok(await sh('cp', [src, path.join(writer.mnt, 'entra/disk.img')]), 'cp');
    await unmountClean(writer);
    expect(stub.tokens()).toBeGreaterThan(before);

    const second = await entraMount();
    const reader = await startMount(second.args, { env: second.env });
    try {
      expect(await sha256OfFile(path.join(reader.mnt, 'entra/disk.img'))).toBe(sha256(data));
    } finally {
      await unmountClean(reader);
    }
  });

  it('a refused sign-in is one line with Entra ID’s reason, and nothing is mounted', async () => {
    const { args, env } = await entraMount('not-the-secret');
    const mnt = await newMountpoint('blobdisk-auth-');
    const r = await runCli(['mount', mnt, ...args], { env });
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(
      `blobdisk: Azure refused account ${AZURITE_ACCOUNT}: Microsoft Entra ID sign-in failed (AADSTS7000215: Invalid client secret provided.); sign in with az login, or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or AZURE_FEDERATED_TOKEN_FILE), or run where a managed identity is assigned`,
    );
    expect(r.stderr).not.toContain('not-the-secret');
    expect(await isMounted(mnt)).toBe(false);
  });

  it('an identity without a data role gets one line naming the role to assign', async () => {
    const { args, env } = await entraMount();
    const mnt = await newMountpoint('blobdisk-auth-');
    const endpointAt = args.indexOf('--endpoint') + 1;
    args[endpointAt] = `${stub.url}/${AZURITE_ACCOUNT}`; // the stub refuses every blob request with 403
    const r = await runCli(['mount', mnt, ...args], { env });
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(
      `blobdisk: Azure refused account ${AZURITE_ACCOUNT}: the signed-in identity has no data role allowing listing containers (403 AuthorizationPermissionMismatch); assign it Storage Blob Data Contributor on the account or container (Storage Blob Data Reader is enough with --read-only)`,
    );
    expect(stub.refused().at(-1)).toEqual({ bearer: true });
  });
});

describe('SAS tokens', () => {
  function sas(permissions: string, resourceTypes = 'sco'): string {
    return generateAccountSASQueryParameters(
      {
        expiresOn: new Date(Date.now() + 3600_000),
        permissions: AccountSASPermissions.parse(permissions),
        resourceTypes: AccountSASResourceTypes.parse(resourceTypes).toString(),
        services: AccountSASServices.parse('b').toString(),
      },
      new StorageSharedKeyCredential(AZURITE_ACCOUNT, plain.accountKey),
    ).toString();
  }
  const flags = (token: string, more: string[] = []): string[] => ['--account', AZURITE_ACCOUNT, '--sas', token, '--endpoint', plain.endpoint, ...more];

  it('one without Write is refused for a read-write mount, naming the permission, and mounts read-only', async () => {
    const token = sas('rl');
    const mnt = await newMountpoint('blobdisk-auth-');
    const r = await runCli(['mount', mnt, ...flags(token)]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe('blobdisk: the SAS token lacks the Write permission (sp=rl); a read-write mount needs at least sp=rwl (rwdlc to also delete and create), or mount with --read-only');
    const ro = await startMount(flags(token, ['--read-only', '--cache-dir', await freshCacheDir()]), { mnt });
    try {
      expect((await sh('ls', [ro.mnt])).stdout.split('\n')).toContain('sas');
    } finally {
      await unmountClean(ro);
    }
  });

  it('one that Azure refuses for an operation gets one line naming what it does not allow', async () => {
    const mnt = await newMountpoint('blobdisk-auth-');
    // Objects and containers, but not the service: listing the account's containers is refused.
    const r = await runCli(['mount', mnt, ...flags(sas('rwdlc', 'co'))], { env: cliEnv({}, await makeTempDir()) });
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toMatch(
      /^blobdisk: Azure refused account devstoreaccount1: the SAS token does not allow listing containers \(403 Authorization\w+\); make one with sp=rwdlc \(and srt=sco for an account SAS, or a container SAS with --container\)$/,
    );
  });
});
