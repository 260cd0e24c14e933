// The tutorials' examples, ported to TypeScript (examples/), run and print what Python's do.
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import * as path from 'node:path';

const examples = path.join(__dirname, '..', 'examples');

function run(name: string, args: string[] = []): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [path.join(examples, `${name}.js`), ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr });
    });
  });
}

function lines(s: string): string[] {
  return s.trim().split('\n').sort();
}

describe('tutorial examples', function () {
  this.timeout(60_000);

  it('demo (npm start): counts primes in this process and in parallel, the same count', async () => {
    const r = await run('demo', ['200000']);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.match(/first child, which (also starts the forkserver|starts): \d+ ms/);
    expect(r.stdout).to.match(/primes below 200,000 in this process: +17984 in \d+ ms/);
    expect(r.stdout).to.match(/primes below 200,000 in \d+ processes: +17984 in \d+ ms \([\d.]+× faster/);
    expect(r.stdout).to.match(/start → join of a child process: [\d.]+ ms/);
  });

  it('separate_memory: a child changes only its own copy of a module-level list', async () => {
    const r = await run('separate_memory');
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.equal('Result(in process p1): [1, 4, 9, 16]\nResult(in main program): []\n');
  });

  it('square_list: a child fills a shared Array and Value', async () => {
    const r = await run('square_list');
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.contain('Result(in main program): [1, 4, 9, 16]');
    expect(r.stdout).to.contain('Sum of squares(in main program): 30');
  });

  it('pipe_messages: every message but END arrives, in order', async () => {
    const r = await run('pipe_messages');
    expect(r.code, r.stderr).to.equal(0);
    const got = r.stdout.split('\n').filter((l) => l.startsWith('Received'));
    expect(got).to.deep.equal(['Received the message: hello', 'Received the message: hey', 'Received the message: hru?']);
    expect(lines(r.stdout).filter((l) => l.startsWith('Sent'))).to.have.length(4);
  });

  it('listener_client: workers found by address square every job; a wrong key is refused on both sides', async () => {
    const r = await run('listener_client');
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.match(/^2 workers connected to \S+socket$/m);
    expect(r.stdout.split('\n').filter((l) => l.includes('²'))).to.deep.equal(
      ['1² = 1', '2² = 4', '3² = 9', '4² = 16', '5² = 25', '6² = 36']);
    expect(r.stdout).to.contain('client with a wrong key: AuthenticationError; listener: AuthenticationError');
  });

  it('bank_balance: the balance ends where it started, every time', async () => {
    const r = await run('bank_balance');
    expect(r.code, r.stderr).to.equal(0);
    const finals = r.stdout.split('\n').filter((l) => l.startsWith('Final balance'));
    expect(finals.length).to.be.at.least(1);
    expect(new Set(finals)).to.deep.equal(new Set(['Final balance = 100']));
  });
});
