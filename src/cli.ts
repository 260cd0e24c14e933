#!/usr/bin/env node
// `npx node-multiprocessing bench [name...]`: runs the benchmark suite, printing a table each.
import * as fs from 'node:fs';
import * as path from 'node:path';

const benchDir = path.join(__dirname, '..', 'bench');

async function bench(names: string[]): Promise<void> {
  const all = fs.readdirSync(benchDir).filter((f) => f.endsWith('.js') && !f.includes('_child') && !f.endsWith('.d.js'))
    .map((f) => f.replace(/\.js$/, '')).sort();
  const chosen = names.length ? names : all;
  for (const name of chosen) {
    if (!all.includes(name)) throw new Error(`no benchmark '${name}': choose from ${all.join(', ')}`);
    const mod = require(path.join(benchDir, `${name}.js`)) as { main?: (argv?: string[]) => Promise<void> };
    if (typeof mod.main !== 'function') continue;
    console.log(`\n## ${name}`);
    await mod.main([]);
  }
}

const [command, ...rest] = process.argv.slice(2);
if (command === 'bench') {
  bench(rest).catch((e) => {
    console.error(e);
    process.exit(1);
  });
} else {
  console.log('usage: node-multiprocessing bench [process_start|sync|shared_memory|connection ...]');
  process.exit(command ? 1 : 0);
}
