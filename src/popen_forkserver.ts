// Starting a child through the forkserver (Python's popen_forkserver.py).
import { forkServer } from './forkserver';
import { native } from './native';
import { aliveReadFd, PopenBase } from './popen_fork';
import type { Process } from './process';
import { encodeLaunch, prepareLaunch } from './spawn';
import { closeFds } from './util';

export class PopenForkserver extends PopenBase {
  readonly method = 'forkserver';

  constructor(proc: Process) {
    super();
    const fds = [aliveReadFd()];
    const launch = prepareLaunch(proc, 'forkserver', fds, 0, null);
    const [mine, theirs] = native.socketpair();
    try {
      // The address is known once the server runs; children reuse the same server.
      const payload = () => encodeLaunch({ ...launch, forkserver: forkServer.info() });
      this.pid = forkServer.spawnChild(payload, fds, theirs, mine);
    } catch (e) {
      closeFds([mine]);
      throw e;
    } finally {
      closeFds([theirs]);
    }
    this.sentinel = mine;
    this.watch(proc);
  }

  protected readStatus(): number {
    try {
      const b = native.readExact(this.sentinel, 4);
      return b ? b.readInt32BE(0) : 255;
    } catch {
      // The server died before the child: Python reports 255 too.
      return 255;
    }
  }
}
