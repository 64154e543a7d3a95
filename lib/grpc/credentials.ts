import { credentials, ServerCredentials, type ChannelCredentials } from '@grpc/grpc-js';

/**
 * The one place that decides how Weft's gRPC is secured. Insecure for now; TLS and mutual TLS are switched on
 * here, for every server and client at once.
 */
export interface TransportSecurity {
  mode: 'insecure';
}

export const defaultSecurity: TransportSecurity = { mode: 'insecure' };

export function serverCredentials(_security: TransportSecurity = defaultSecurity): ServerCredentials {
  return ServerCredentials.createInsecure();
}

export function channelCredentials(_security: TransportSecurity = defaultSecurity): ChannelCredentials {
  return credentials.createInsecure();
}
