import {
  compileNodePolicy,
  createCompileCache,
  createViewContext,
  type CompileCache,
  type NodePolicy,
  type PlacedPod,
  type ViewContext,
} from './compile.js';
import type { World } from './evaluate.js';

/**
 * The compiled rules of every watched node of one replica, kept up to date view after view. A view is compiled once
 * for all nodes (`createViewContext`: peer sets and each pod profile's entries are worked out once and shared), and
 * only the nodes a change can concern are compiled again: a node is concerned when a changed pod is (or was) on it,
 * when it hosts a pod that a policy added, changed or gone selects (its subject, old or new), or that an admin
 * policy's subject takes in or lets go because its namespace's labels changed, when a set its rules name changes
 * members (a changed pod joins, leaves or changes inside it, or a namespace's changed labels move its pods in or out),
 * or when its rules depend on every pod (egress named ports). Every other node keeps its compiled result (the same
 * object) and is sent nothing. Pure: no I/O; `compile.test.ts`-style sequences check it against compiling from scratch.
 */
export interface ClusterCompiler {
  /**
   * Moves to the next view (pods and policies as the world cache gives them: an unchanged row is the same object)
   * and compiles again every node the change concerns. Returns those nodes (their results may or may not differ).
   */
  advance(world: World, pods: readonly PlacedPod[]): string[];
  /** The node's rules at the current view: compiled now the first time, then as `advance` left them. */
  compile(node: string): NodePolicy;
  /** The node is no longer watched: its cache goes. */
  forget(node: string): void;
  /** How many node compilations were done in all (for tests and the bench's reasoning). */
  compilations(): number;
}

interface NodeState {
  cache: CompileCache;
  policy: NodePolicy | null;
  /** Peer selectors (rule texts) its rules name. */
  texts: Set<string>;
  /** Its rules depend on every pod (egress named ports resolved on each destination). */
  everyPod: boolean;
}

/** Nodes without pods all have these rules. */
const EMPTY: NodePolicy = Object.freeze({ pods: [], sets: new Map() }) as NodePolicy;

export function createClusterCompiler(): ClusterCompiler {
  let context: ViewContext | null = null;
  const nodes = new Map<string, NodeState>();
  let count = 0;

  const compileNode = (node: string, state: NodeState) => {
    const ctx = context!;
    if (!ctx.byNode.has(node)) {
      // No pods: nothing to compile, nothing depends on anything (the cache starts again if pods arrive).
      state.cache = createCompileCache();
      state.policy = EMPTY;
      state.texts = new Set();
      state.everyPod = false;
      return;
    }
    count++;
    const policy = compileNodePolicy(ctx.world, ctx.pods, node, state.cache, ctx);
    state.policy = policy;
    state.texts = state.cache.texts ?? new Set();
    state.everyPod = false;
    for (const p of state.cache.pods.values()) if (p.everyPod) state.everyPod = true;
  };

  return {
    advance(world, pods) {
      const { context: next, change } = createViewContext(world, pods, context ?? undefined);
      context = next;
      const concerned: string[] = [];
      if (change.all) {
        for (const [node, state] of nodes) {
          compileNode(node, state);
          concerned.push(node);
        }
        return concerned;
      }
      if (change.sameWorld && change.pods.length === 0) return concerned;
      const touched = new Set(change.pods.map((p) => p.node));
      for (const p of change.subjects) touched.add(p.node);
      for (const [node, state] of nodes) {
        let hit = touched.has(node) || state.everyPod;
        if (!hit && change.texts.size > 0) for (const t of state.texts) if ((hit = change.texts.has(t))) break;
        if (!hit) continue;
        compileNode(node, state);
        concerned.push(node);
      }
      return concerned;
    },
    compile(node) {
      if (!context) throw new Error('compile before the first view');
      let state = nodes.get(node);
      if (!state) {
        nodes.set(node, (state = { cache: createCompileCache(), policy: null, texts: new Set(), everyPod: false }));
        compileNode(node, state);
      }
      return state.policy!;
    },
    forget(node) {
      nodes.delete(node);
    },
    compilations: () => count,
  };
}
