export type Identity =
  | { kind: 'none' }                                  // no client certificate / no token
  | { kind: 'node'; name: string }                     // an agent: client cert SAN URI weft:node:<name>
  | { kind: 'admin'; name: string }                    // the CLI / an operator: SAN URI weft:admin:<name>
  | { kind: 'controller'; name: string }               // a Kubernetes controller: SAN URI weft:controller:<cluster>
  | { kind: 'token'; name: string; scopes: string[] }; // an external system's API token (later phase)
