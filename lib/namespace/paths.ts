/* Paths in the mount ↔ containers and blob names. With --container the root is that
 * container; without it the root holds one directory per container. Blob names split on
 * '/' into directories. Names that cannot be shown as a path component (empty, '.', '..',
 * over 255 bytes) are left out of listings by the namespace. */

export interface Location {
  /** undefined: the account root (only without --container). */
  readonly container: string | undefined;
  /** Blob name or directory prefix without a trailing '/'; '' is the container root. */
  readonly name: string;
}

export function locate(path: string, fixedContainer: string | undefined): Location {
  const parts = path.split('/').filter((p) => p !== '');
  if (fixedContainer !== undefined) return { container: fixedContainer, name: parts.join('/') };
  const [container, ...rest] = parts;
  return { container, name: rest.join('/') };
}

export function isShowableComponent(name: string): boolean {
  return name !== '' && name !== '.' && name !== '..' && Buffer.byteLength(name) <= 255;
}

/** Why `component` cannot be part of a new blob's name, or undefined when it can. Azure
 *  drops dots that end a path segment and treats a backslash like '/', so such a name would not
 *  come back as written; control characters are refused or mangled on the way. */
export function blobComponentProblem(component: string): string | undefined {
  if (component.endsWith('.')) return 'ends with a dot, which Azure drops from blob names';
  if (component.includes('\\')) return "contains '\\', which Azure reads as '/'";
  if (/[\u0000-\u001f\u007f]/.test(component)) return 'contains a control character';
  return undefined;
}

export function parentAndBase(name: string): { parent: string; base: string } {
  const i = name.lastIndexOf('/');
  return i < 0 ? { parent: '', base: name } : { parent: name.slice(0, i), base: name.slice(i + 1) };
}

/** '*.img' → /^.*\.img$/i: '*' any run, '?' one character, matched against the file name. */
export function globToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`, 'i');
}
