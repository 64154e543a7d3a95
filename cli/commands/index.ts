import type { CommandGroup } from '../core/command.js';
import { auditCommands } from './audit.js';
import { caCommands } from './ca.js';
import { clusterCommands } from './cluster.js';
import { cniCommands } from './cni.js';
import { domainCommands } from './domain.js';
import { ipamCommands } from './ipam.js';
import { kubeControllerCommands } from './kube-controller.js';
import { nodeCommands, routesCommands } from './node.js';
import { policyCommands } from './policy.js';
import { poolCommands } from './pool.js';
import { tokenCommands } from './token.js';
import { upCommands } from './up.js';

/**
 * The `weft` command: every command group, in the order help lists them. Each module declares its commands, flags
 * and handlers; cli/core parses, connects, prints and maps errors to exit statuses (cli/DESIGN.md).
 */
export const COMMAND_GROUPS: readonly CommandGroup[] = [
  upCommands,
  caCommands,
  kubeControllerCommands,
  cniCommands,
  clusterCommands,
  nodeCommands,
  routesCommands,
  policyCommands,
  poolCommands,
  ipamCommands,
  domainCommands,
  auditCommands,
  tokenCommands,
];
