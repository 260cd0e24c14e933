// Entry point of a child started by the 'spawn' method: reads its launch message
// from fd 3, which it then keeps open as its parent's sentinel.
import './compile_cache';
import './index';
import { native } from './native';
import { addLifelineFd, decodeLaunch, runLaunchedChild } from './spawn';

const LAUNCH_FD = 3;
const header = native.readExact(LAUNCH_FD, 8, 60_000);
if (!header) {
  process.stderr.write('node-multiprocessing: no launch message from the parent within 60 s\n');
  process.exit(1);
}
const length = header.readUInt32BE(0);
const fdCount = header.readUInt32BE(4);
const payload = native.readExact(LAUNCH_FD, length)!;
addLifelineFd(LAUNCH_FD);
const fds = Array.from({ length: fdCount }, (_, i) => LAUNCH_FD + 1 + i);
for (const fd of fds) native.setCloexec(fd, true);
runLaunchedChild(decodeLaunch(payload), fds, false);
