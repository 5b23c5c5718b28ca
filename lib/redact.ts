/* Secrets (account keys, SAS signatures, connection strings) must never reach a log line
 * or an error message. Messages are built without them; this is the safety net applied
 * to every line the logger and the CLI print. */

const PATTERNS: ReadonlyArray<[RegExp, string]> = [
  [/(AccountKey=)[^;\s"']+/gi, '$1***'],
  [/(SharedAccessSignature=)[^;\s"']+/gi, '$1***'],
  [/((?:^|[?&\s;])sig=)[^&\s"';]+/gi, '$1***'],
  [/(SharedKey\s+[^:\s]+:)[^\s"']+/gi, '$1***'],
  // A bare account key: 64 random bytes in base64 (86 characters and "==" padding, which
  // may be missing); longer or shorter runs (digests, names) are left alone.
  [/(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{86}(?:==)?(?![A-Za-z0-9+/=])/g, '***'],
];

export function redact(text: string): string {
  let out = text;
  for (const [re, replacement] of PATTERNS) out = out.replace(re, replacement);
  return out;
}
