import { describeSettings } from '../../lib/config.js';
import { kubeControllerSettings } from '../../kube-controller/config.js';
import type { CommandGroup } from '../core/command.js';

/** `weft kube-controller`: Weft kept in line with a Kubernetes API server (kube-controller/DESIGN.md). */
export const kubeControllerCommands: CommandGroup = {
  name: 'kube-controller',
  summary: "keep Weft in line with a Kubernetes cluster's API server",
  help: () => `settings of \`weft kube-controller\` (environment):\n${describeSettings(kubeControllerSettings)}`,
  commands: [
    {
      path: ['kube-controller'],
      summary:
        'follow Nodes, Namespaces, Pods, NetworkPolicies and admin policies into Weft (settings in the environment)',
      details:
        'Settings come from the environment: weft kube-controller --help lists them. Runs until SIGTERM or SIGINT.',
      async run() {
        // Loaded only here: the Kubernetes client is large, and no other command needs it.
        const { runKubeController } = await import('../../kube-controller/main.js');
        await runKubeController();
        return new Promise<number>(() => {}); // runs until SIGTERM or SIGINT
      },
    },
  ],
};
