// The tutorial's bank balance: 10,000 withdrawals and 10,000 deposits of 1 from two
// processes. Without the Lock the final balance is anything; with it, always 100.
//
//   npx tsc -p tsconfig.json && node dist/examples/bank_balance.js [--no-lock]
import * as mp from '../src/index';

type Balance = { value: number };

export function withdraw(balance: Balance, lock: mp.Lock | null): void {
  for (let i = 0; i < 10_000; i++) {
    lock?.acquireSync();
    balance.value = balance.value - 1;
    lock?.release();
  }
}

export function deposit(balance: Balance, lock: mp.Lock | null): void {
  for (let i = 0; i < 10_000; i++) {
    lock?.acquireSync();
    balance.value = balance.value + 1;
    lock?.release();
  }
}

export async function performTransactions(useLock: boolean): Promise<number> {
  // The initial balance, in shared memory. RawValue: no lock of its own, so without
  // our Lock the read-modify-write races (as the tutorial shows).
  const balance = mp.RawValue('i', 100);
  const lock = useLock ? new mp.Lock() : null;
  const p1 = new mp.Process({ target: withdraw, args: [balance, lock] });
  const p2 = new mp.Process({ target: deposit, args: [balance, lock] });
  p1.start();
  p2.start();
  await p1.join();
  await p2.join();
  lock?.close();
  return balance.value;
}

async function main(): Promise<void> {
  const useLock = !process.argv.includes('--no-lock');
  for (let i = 0; i < 10; i++) {
    console.log(`Final balance = ${await performTransactions(useLock)}`);
  }
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
