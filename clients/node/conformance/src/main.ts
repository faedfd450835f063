// The conformance runner of @cachecoord/client (clients-contract: `run scenarios | stampede | retry`). It uses
// the library exactly as an application does (imported by its package name). Stdout is machine-read: JSON lines
// (and `ready` / `calling` for retry); logs go to stderr.
import { runRetry } from './retry';
import { runScenarios } from './scenarios';
import { runStampede } from './stampede';

/** `--name value` flags into a map; every flag takes a value. */
function flags(args: string[]): Map<string, string> {
  const parsed = new Map<string, string>();
  for (let i = 0; i < args.length; i += 2) {
    const [name, value] = [args[i], args[i + 1]];
    if (!name.startsWith('--') || value === undefined) throw new Error(`bad argument ${name}`);
    parsed.set(name.slice(2), value);
  }
  return parsed;
}

function required(parsed: Map<string, string>, name: string): string {
  const value = parsed.get(name);
  if (value === undefined) throw new Error(`--${name} is required`);
  return value;
}

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  const args = flags(rest);
  const token = args.get('token');
  switch (command) {
    case 'scenarios':
      await runScenarios(required(args, 'target'), required(args, 'scenarios'), required(args, 'run-id'), token);
      break;
    case 'stampede':
      await runStampede(
        required(args, 'targets').split(','),
        required(args, 'key'),
        Number(required(args, 'callers')),
        Number(args.get('clients') ?? 0),
        token,
      );
      break;
    case 'retry':
      await runRetry(required(args, 'target'), required(args, 'dead'), required(args, 'key'), token);
      break;
    default:
      throw new Error(`usage: run scenarios|stampede|retry ... (got ${command ?? 'nothing'})`);
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(`conformance runner (node): ${error instanceof Error ? error.stack : String(error)}`);
    process.exit(2);
  },
);
