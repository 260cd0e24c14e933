// The tutorials' square_list example: a child fills a shared Array with squares
// and a shared Value with their sum; the parent sees both after join().
//   node dist/examples/square_list.js [forkserver|spawn|fork]
import * as mp from '../src/index';

export function squareList(mylist: number[], result: mp.SynchronizedArray<number>, squareSum: mp.SynchronizedValue<number>): void {
  // squares of mylist into the result array
  mylist.forEach((num, idx) => {
    result[idx] = num * num;
  });
  // square_sum value
  squareSum.value = result.toArray().reduce((a, b) => a + b, 0);
  console.log(`Result(in process p1): [${result.toArray().join(', ')}]`);
  console.log(`Sum of squares(in process p1): ${squareSum.value}`);
}

async function main(): Promise<void> {
  const method = process.argv[2] as mp.StartMethod | undefined;
  const ctx = mp.getContext(method);
  const mylist = [1, 2, 3, 4];
  // an Array of C int with space for 4 integers, and a Value of C int
  const result = mp.Array('i', 4);
  const squareSum = mp.Value('i');
  const p1 = new ctx.Process({ target: squareList, args: [mylist, result, squareSum] });
  p1.start();
  await p1.join();
  console.log(`Result(in main program): [${result.toArray().join(', ')}]`);
  console.log(`Sum of squares(in main program): ${squareSum.value}`);
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
