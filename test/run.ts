// The test runner behind `npm test`: mocha over every test file, then the process
// tests again in a `node --single-threaded` process, where the 'fork' start method
// exists. Prints one line "N passed, M failed" for the whole run.
//   node dist/test/run.js [--node /path/to/node] [--fork-only] [--summary FILE] [files...]
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const args = process.argv.slice(2);
function option(name: string): string | null {
  const i = args.indexOf(name);
  if (i < 0) return null;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
}
const nodeBin = option('--node') ?? process.execPath;
const summaryFile = option('--summary');
const forkOnly = args.includes('--fork-only');
const files = args.filter((a) => !a.startsWith('--'));

const testDir = __dirname;
const mochaBin = require.resolve('mocha/bin/mocha.js');
const allFiles = files.length > 0 ? files : fs.readdirSync(testDir).filter((f) => f.endsWith('.test.js')).sort()
  .map((f) => path.join(testDir, f));

interface Counts { passed: number; failed: number }

function runMocha(label: string, nodeArgs: string[], env: NodeJS.ProcessEnv, extra: string[]): Promise<Counts> {
  return new Promise((resolve) => {
    process.stdout.write(`\n=== ${label} (${path.basename(nodeBin)} ${nodeArgs.join(' ')}) ===\n`);
    const child = spawn(nodeBin, [...nodeArgs, mochaBin, '--timeout', '60000', '--reporter', 'spec', ...extra, ...allFiles], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, ...env },
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      process.stdout.write(d);
    });
    // A hung suite is a failure, not a wait: 20 minutes bounds the whole mocha run.
    const timer = setTimeout(() => {
      process.stdout.write(`\n${label}: killed after 20 minutes\n`);
      child.kill('SIGKILL');
    }, 20 * 60_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      const passed = Number(/(\d+) passing/.exec(out)?.[1] ?? 0);
      let failed = Number(/(\d+) failing/.exec(out)?.[1] ?? 0);
      if (code !== 0 && failed === 0) failed = 1; // crashed or killed: count the run as a failure
      resolve({ passed, failed });
    });
  });
}

async function main(): Promise<void> {
  const total: Counts = { passed: 0, failed: 0 };
  const add = (c: Counts) => { total.passed += c.passed; total.failed += c.failed; };
  if (!forkOnly) add(await runMocha('all tests', ['--expose-gc'], {}, []));
  // Only the suites parametrized by start method, for 'fork' alone.
  add(await runMocha("tests under 'fork'", ['--single-threaded', '--expose-gc'], { MP_TEST_METHODS: 'fork' },
    ['--grep', "under 'fork'"]));
  if (summaryFile) fs.appendFileSync(summaryFile, `${total.passed} ${total.failed}\n`);
  process.stdout.write(`\n${total.passed} passed, ${total.failed} failed\n`);
  process.exitCode = total.failed > 0 ? 1 : 0;
}

void main();
