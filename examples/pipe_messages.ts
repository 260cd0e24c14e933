// Tutorial: two processes talk through a Pipe; the receiver stops at "END".
//   node dist/examples/pipe_messages.js
import * as mp from '../src/index';
import type { Connection } from '../src/connection';

export function sender(conn: Connection, msgs: string[]): void {
  for (const msg of msgs) {
    conn.send(msg);
    console.log(`Sent the message: ${msg}`);
  }
  conn.close();
}

export async function receiver(conn: Connection): Promise<void> {
  for (;;) {
    const msg = await conn.recv();
    if (msg === 'END') break;
    console.log(`Received the message: ${msg}`);
  }
}

if (require.main === module) {
  const msgs = ['hello', 'hey', 'hru?', 'END'];
  const [parentConn, childConn] = mp.Pipe();
  const p1 = new mp.Process({ target: sender, args: [parentConn, msgs] });
  const p2 = new mp.Process({ target: receiver, args: [childConn] });
  p1.start();
  p2.start();
  // The children hold their own ends now.
  parentConn.close();
  childConn.close();
  Promise.all([p1.join(), p2.join()]).then(() => {
    if (p1.exitCode !== 0 || p2.exitCode !== 0) process.exitCode = 1;
  });
}
