// Runs a bench/*_py.py script under Python 3.13 (the reference the benchmarks compare with)
// and parses the JSON it prints. Python: $PYTHON, a pyenv 3.13 install, or python3.13 on PATH.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

function pythonCandidates(): string[] {
  const out: string[] = [];
  if (process.env.PYTHON) out.push(process.env.PYTHON);
  const root = process.env.PYENV_ROOT ?? path.join(os.homedir(), '.pyenv');
  try {
    for (const v of fs.readdirSync(path.join(root, 'versions')).filter((d) => d.startsWith('3.13')).sort().reverse()) {
      out.push(path.join(root, 'versions', v, 'bin', 'python3.13'));
    }
  } catch {
    /* no pyenv */
  }
  out.push('python3.13');
  return out;
}

/** The parsed output of bench/<script> run with `args`, or why no Python 3.13 could run it. */
export function runPython<T>(script: string, args: Array<string | number>, timeoutMs = 300_000): T | string {
  const file = path.join(__dirname, '..', '..', 'bench', script);
  let why = 'python3.13 not found';
  for (const exe of pythonCandidates()) {
    try {
      const out = execFileSync(exe, [file, ...args.map(String)], { encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
      return JSON.parse(out) as T;
    } catch (e) {
      why = `${exe}: ${(e as Error).message.split('\n')[0]}`;
    }
  }
  return why;
}
