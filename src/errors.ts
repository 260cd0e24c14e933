// The exported error classes (API.md "Conventions").

export class ProcessError extends Error {
  constructor(message?: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

export class TimeoutError extends ProcessError {}
export class AuthenticationError extends ProcessError {}
export class BrokenBarrierError extends Error {
  constructor(message = 'the barrier is broken', options?: ErrorOptions) {
    super(message, options);
    this.name = 'BrokenBarrierError';
  }
}
export class BrokenPoolError extends ProcessError {}

/** recvBytesInto() got a message larger than the buffer: the whole message is in `data`. */
export class BufferTooShort extends ProcessError {
  constructor(readonly data: Buffer, message = `buffer too short for a message of ${data.length} bytes`) {
    super(message);
  }
}

export class Empty extends Error {
  constructor(message = 'the queue is empty') {
    super(message);
    this.name = 'Empty';
  }
}

export class Full extends Error {
  constructor(message = 'the queue is full') {
    super(message);
    this.name = 'Full';
  }
}

/** An error raised in another process (a manager's server, a pool worker). */
export class RemoteError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'RemoteError';
  }
}

/** The other end of a Connection was closed (Python's EOFError). */
export class EOFError extends Error {
  constructor(message = 'EOF: the other end was closed') {
    super(message);
    this.name = 'EOFError';
  }
}
