import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createPrivateKey, createPublicKey, randomBytes, webcrypto, X509Certificate as NodeX509 } from 'node:crypto';
import { chmod, mkdir, readFile, stat } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { writeFileAtomic } from './atomic-file.js';
import { identityUri, type CertificateIdentityKind } from './auth/identity.js';

/**
 * Weft's certificate authority: a CA, the control plane's server certificate and client certificates whose SAN URI
 * names an identity (`weft:node:n1`, lib/auth/identity.ts). ECDSA P-256 with SHA-256; serial numbers are 128 random
 * bits. Keys are PKCS#8 PEM, written 0600.
 */
x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const KEY_ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING_ALGORITHM = { name: 'ECDSA', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;

/** The name clients verify the control plane's certificate against, whatever address they dial. */
export const CONTROL_PLANE_SERVER_NAME = 'weft-control-plane';
export const CA_DAYS = 3650;
export const LEAF_DAYS = 365;

/** A certificate and its private key, as PEM. */
export interface KeyPairPem {
  cert: string;
  key: string;
}

function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f; // positive
  if (b[0] === 0) b[0] = 1; // and exactly 16 bytes (DER drops a leading zero)
  return b.toString('hex');
}

function validity(days: number): { notBefore: Date; notAfter: Date } {
  if (!Number.isInteger(days) || days < 1 || days > 36_500)
    throw new Error(`certificate validity ${days} days must be a whole number from 1 to 36500`);
  const now = Date.now();
  // An hour back: a peer whose clock is a little behind still accepts a certificate made just now.
  return { notBefore: new Date(now - 3_600_000), notAfter: new Date(now + days * DAY_MS) };
}

async function generateKeys(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function exportKey(key: CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await webcrypto.subtle.exportKey('pkcs8', key as webcrypto.CryptoKey), 'PRIVATE KEY');
}

async function importSigningKey(pem: string): Promise<CryptoKey> {
  const der = x509.PemConverter.decodeFirst(pem);
  return (await webcrypto.subtle.importKey('pkcs8', der, KEY_ALGORITHM, false, ['sign'])) as CryptoKey;
}

/** A new self-signed CA (`CN=<commonName>`), valid `days` (10 years by default). */
export async function createCa(opts: { commonName?: string; days?: number } = {}): Promise<KeyPairPem> {
  const keys = await generateKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: `CN=${opts.commonName ?? 'Weft CA'}`,
    ...validity(opts.days ?? CA_DAYS),
    keys,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert: cert.toString('pem'), key: await exportKey(keys.privateKey) };
}

/** What a certificate is for: the control plane's server side, or a client that is an identity. */
export type CertificateSubject =
  | { kind: 'server'; dnsNames: string[]; ipAddresses: string[]; uris?: string[] }
  | { kind: CertificateIdentityKind; name: string };

/** A certificate for `subject` signed by `ca`, valid `days` (1 year by default), with a new key. */
export async function issueCertificate(
  ca: KeyPairPem,
  subject: CertificateSubject,
  opts: { days?: number } = {},
): Promise<KeyPairPem> {
  const keys = await generateKeys();
  const cert = await signCertificate(ca, subject, keys.publicKey, validity(opts.days ?? LEAF_DAYS));
  return { cert, key: await exportKey(keys.privateKey) };
}

/**
 * A client certificate for a public key someone else holds (the bootstrap: lib/tls-bootstrap.ts asks, the control
 * plane signs), valid `validityMs` from now (back-dated an hour like every certificate here). Returns the PEM.
 */
export async function issueCertificateForKey(
  ca: KeyPairPem,
  subject: { kind: CertificateIdentityKind; name: string },
  publicKey: CryptoKey,
  validityMs: number,
): Promise<string> {
  if (!Number.isInteger(validityMs) || validityMs < 60_000)
    throw new Error(`certificate validity ${validityMs} ms must be at least a minute`);
  const now = Date.now();
  return signCertificate(ca, subject, publicKey, {
    notBefore: new Date(now - 3_600_000),
    notAfter: new Date(now + validityMs),
  });
}

/** Why a public key PEM cannot be signed, as an Error with this message. */
export class PublicKeyError extends Error {}

/**
 * The public key of a PEM that is a SubjectPublicKeyInfo ("PUBLIC KEY") or a PKCS#10 request ("CERTIFICATE
 * REQUEST", whose self-signature must verify: the caller holds the private key). ECDSA P-256 only, the curve of every
 * Weft key. Throws PublicKeyError saying what is wrong.
 */
export async function publicKeyFromPem(pem: string): Promise<CryptoKey> {
  const label = /-----BEGIN ([A-Z0-9 ]+)-----/.exec(pem)?.[1];
  let spki: x509.PublicKey;
  try {
    if (label === 'PUBLIC KEY') {
      spki = new x509.PublicKey(pem);
    } else if (label === 'CERTIFICATE REQUEST' || label === 'NEW CERTIFICATE REQUEST') {
      const csr = new x509.Pkcs10CertificateRequest(pem);
      if (!(await csr.verify()))
        throw new PublicKeyError("the certificate request's signature does not verify with its own public key");
      spki = csr.publicKey;
    } else {
      throw new PublicKeyError(
        `expected a PEM "PUBLIC KEY" or "CERTIFICATE REQUEST"${label ? `, got "${label}"` : ''}`,
      );
    }
  } catch (err) {
    if (err instanceof PublicKeyError) throw err;
    throw new PublicKeyError(`the PEM does not parse: ${(err as Error).message}`);
  }
  const alg = spki.algorithm as { name?: string; namedCurve?: string };
  if (alg.name !== 'ECDSA' || alg.namedCurve !== 'P-256')
    throw new PublicKeyError(
      `the key must be ECDSA P-256 (it is ${alg.name ?? 'unknown'}${alg.namedCurve ? ` ${alg.namedCurve}` : ''})`,
    );
  try {
    return (await webcrypto.subtle.importKey('spki', spki.rawData, KEY_ALGORITHM, true, ['verify'])) as CryptoKey;
  } catch (err) {
    throw new PublicKeyError(`the key is not a valid P-256 point: ${(err as Error).message}`);
  }
}

/** A new ECDSA P-256 key pair for a client that asks for its own certificate: the private key as PKCS#8 PEM, the public as SPKI PEM. */
export async function createClientKey(): Promise<{ key: string; publicKey: string }> {
  const keys = await generateKeys();
  return { key: await exportKey(keys.privateKey), publicKey: await exportPublicKey(keys.publicKey) };
}

/** The SPKI PEM of a PKCS#8 P-256 private key's public half (a key kept across renewals). */
export function publicKeyOfPrivateKey(keyPem: string): string {
  return createPublicKey(createPrivateKey(keyPem)).export({ type: 'spki', format: 'pem' }).toString();
}

async function exportPublicKey(key: CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await webcrypto.subtle.exportKey('spki', key as webcrypto.CryptoKey), 'PUBLIC KEY');
}

async function signCertificate(
  ca: KeyPairPem,
  subject: CertificateSubject,
  publicKey: CryptoKey,
  period: { notBefore: Date; notAfter: Date },
): Promise<string> {
  const caCert = new x509.X509Certificate(ca.cert);
  const signingKey = await importSigningKey(ca.key);
  const names: x509.JsonGeneralName[] = [];
  let commonName: string;
  let usages: x509.ExtendedKeyUsage[];
  if (subject.kind === 'server') {
    for (const ip of subject.ipAddresses)
      if (!isIP(ip)) throw new Error(`server certificate IP address ${JSON.stringify(ip)} is not an IP address`);
    names.push(
      ...subject.dnsNames.map((value) => ({ type: 'dns' as const, value })),
      ...subject.ipAddresses.map((value) => ({ type: 'ip' as const, value })),
    );
    names.push(...(subject.uris ?? []).map((value) => ({ type: 'url' as const, value })));
    commonName = subject.dnsNames[0] ?? CONTROL_PLANE_SERVER_NAME;
    // clientAuth too: the control plane's own calls between its services present this certificate.
    usages = [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth];
  } else {
    const uri = identityUri(subject.kind, subject.name);
    names.push({ type: 'url', value: uri });
    commonName = uri;
    usages = [x509.ExtendedKeyUsage.clientAuth];
  }
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: `CN=${commonName}`,
    issuer: caCert.subject,
    ...period,
    publicKey,
    signingKey,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(usages),
      new x509.SubjectAlternativeNameExtension(names),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  return cert.toString('pem');
}

// ---- files -------------------------------------------------------------------------------------------------------

/** The files of `weft up`'s pki folder (<data-dir>/pki, mode 0700). */
export const PKI_FILES = {
  caCert: 'ca.crt',
  caKey: 'ca.key',
  serverCert: 'server.crt',
  serverKey: 'server.key',
  adminCert: 'admin.crt',
  adminKey: 'admin.key',
} as const;

/** The files of a client's TLS folder (a Kubernetes TLS Secret's keys plus the CA). */
export const CLIENT_TLS_FILES = { caCert: 'ca.crt', cert: 'tls.crt', key: 'tls.key' } as const;

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}

/** Reads a CA (cert and key) from a pki folder; says what is missing. */
export async function readCa(pkiDir: string): Promise<KeyPairPem> {
  const certFile = path.join(pkiDir, PKI_FILES.caCert);
  const keyFile = path.join(pkiDir, PKI_FILES.caKey);
  try {
    return { cert: await readFile(certFile, 'utf8'), key: await readFile(keyFile, 'utf8') };
  } catch (err) {
    throw new Error(
      `cannot read Weft's CA from ${pkiDir} (${PKI_FILES.caCert} and ${PKI_FILES.caKey}; \`weft up\` makes them on its first start): ${(err as Error).message}`,
      { cause: err },
    );
  }
}

async function writePair(dir: string, certName: string, keyName: string, pair: KeyPairPem): Promise<void> {
  await writeFileAtomic(path.join(dir, keyName), pair.key, 0o600);
  await writeFileAtomic(path.join(dir, certName), pair.cert, 0o644);
}

/** Whether the certificate in `certFile` is signed by `caPem` (false when missing or unreadable). */
async function signedBy(certFile: string, caPem: string): Promise<boolean> {
  try {
    return new NodeX509(await readFile(certFile)).verify(new NodeX509(caPem).publicKey);
  } catch {
    return false;
  }
}

/**
 * Makes the control plane's pki folder on first start: a CA, a server certificate (DNS weft-control-plane,
 * localhost and `extraHosts` names, IP 127.0.0.1 and `extraHosts` addresses) and the local admin's client
 * certificate (weft:admin:local). Files already there are kept (a CA is never replaced); a missing server or admin
 * certificate, or one another CA signed, is issued from the CA that is there. The folder is 0700 and keys 0600.
 * With `caDir` (a mounted Secret holding ca.crt and ca.key: Kubernetes), the CA is read from there and never made;
 * pkiDir gets a copy of ca.crt only. Returns the CA, which the bootstrap signs with.
 */
export async function ensureControlPlanePki(
  pkiDir: string,
  extraHosts: string[] = [],
  opts: { caDir?: string } = {},
): Promise<{ created: string[]; ca: KeyPairPem }> {
  await mkdir(pkiDir, { recursive: true, mode: 0o700 });
  await chmod(pkiDir, 0o700);
  const created: string[] = [];
  const caCertFile = path.join(pkiDir, PKI_FILES.caCert);
  const caKeyFile = path.join(pkiDir, PKI_FILES.caKey);
  let ca: KeyPairPem;
  if (opts.caDir) {
    ca = await readCa(opts.caDir);
    try {
      createPrivateKey(ca.key);
      if (!new NodeX509(ca.cert).ca) throw new Error(`${PKI_FILES.caCert} is not a CA certificate`);
    } catch (err) {
      throw new Error(`Weft's CA in ${opts.caDir} is not usable: ${(err as Error).message}`, { cause: err });
    }
    if ((await writeFileAtomic(caCertFile, ca.cert, 0o644)) === 'written') created.push(PKI_FILES.caCert);
  } else if (!(await exists(caCertFile)) && !(await exists(caKeyFile))) {
    ca = await createCa();
    await writePair(pkiDir, PKI_FILES.caCert, PKI_FILES.caKey, ca);
    created.push(PKI_FILES.caCert);
  } else {
    ca = await readCa(pkiDir);
  }
  if (!(await signedBy(path.join(pkiDir, PKI_FILES.serverCert), ca.cert))) {
    await writePair(
      pkiDir,
      PKI_FILES.serverCert,
      PKI_FILES.serverKey,
      await issueCertificate(ca, serverSubject(extraHosts)),
    );
    created.push(PKI_FILES.serverCert);
  }
  if (!(await signedBy(path.join(pkiDir, PKI_FILES.adminCert), ca.cert))) {
    await writePair(
      pkiDir,
      PKI_FILES.adminCert,
      PKI_FILES.adminKey,
      await issueCertificate(ca, { kind: 'admin', name: 'local' }),
    );
    created.push(PKI_FILES.adminCert);
  }
  return { created, ca };
}

/** `weft ca init`: a CA (ca.crt, ca.key 0600) in `outDir`, unless one is there already (never replaced). */
export async function initCa(outDir: string): Promise<{ created: boolean; cert: string }> {
  await mkdir(outDir, { recursive: true, mode: 0o700 });
  if ((await exists(path.join(outDir, PKI_FILES.caCert))) || (await exists(path.join(outDir, PKI_FILES.caKey)))) {
    return { created: false, cert: (await readCa(outDir)).cert };
  }
  const ca = await createCa();
  await writePair(outDir, PKI_FILES.caCert, PKI_FILES.caKey, ca);
  return { created: true, cert: ca.cert };
}

/** The identity the control plane's own calls between its services carry (in its server certificate). */
export const CONTROL_PLANE_IDENTITY_URI = 'weft:admin:control-plane';

/** The server certificate's subject: weft-control-plane, localhost, 127.0.0.1 and the hosts it listens on. */
export function serverSubject(extraHosts: string[] = []): CertificateSubject {
  const dns = new Set([CONTROL_PLANE_SERVER_NAME, 'localhost']);
  const ips = new Set(['127.0.0.1']);
  for (const h of extraHosts) {
    const host = h.replace(/^\[|\]$/g, '');
    if (!host || host === '0.0.0.0' || host === '::') continue;
    if (isIP(host)) ips.add(host);
    else dns.add(host);
  }
  return { kind: 'server', dnsNames: [...dns], ipAddresses: [...ips], uris: [CONTROL_PLANE_IDENTITY_URI] };
}

/** Writes a client TLS folder: ca.crt, tls.crt and tls.key (0600); the folder is made 0700 if new. */
export async function writeClientTlsDir(outDir: string, caCert: string, pair: KeyPairPem): Promise<void> {
  await mkdir(outDir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(path.join(outDir, CLIENT_TLS_FILES.caCert), caCert, 0o644);
  await writePair(outDir, CLIENT_TLS_FILES.cert, CLIENT_TLS_FILES.key, pair);
}

/** Issues `subject`'s client certificate from the CA in `pkiDir` into `outDir` (ca.crt, tls.crt, tls.key). */
export async function issueClientTlsDir(
  pkiDir: string,
  outDir: string,
  subject: { kind: CertificateIdentityKind; name: string },
  days?: number,
): Promise<void> {
  const ca = await readCa(pkiDir);
  await writeClientTlsDir(outDir, ca.cert, await issueCertificate(ca, subject, { days }));
}

/** A summary of a PEM certificate (Node's parser): for tests and `weft ca` output. */
export function describeCertificate(pem: string): {
  subject: string;
  subjectAltName: string | undefined;
  validFrom: Date;
  validTo: Date;
  serialNumber: string;
  ca: boolean;
} {
  const c = new NodeX509(pem);
  return {
    subject: c.subject,
    subjectAltName: c.subjectAltName,
    validFrom: new Date(c.validFrom),
    validTo: new Date(c.validTo),
    serialNumber: c.serialNumber,
    ca: c.ca,
  };
}
