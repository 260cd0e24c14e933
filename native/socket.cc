// Unix sockets and raw fd I/O: socketpair, listen/connect, SCM_RIGHTS fd passing.
#include "common.h"
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <algorithm>
#include <time.h>
#include <unistd.h>
#include <memory>
#include <vector>

namespace mp {
namespace {

constexpr int kMaxFdsPerMessage = 253;  // Linux's SCM_MAX_FD

void FillUnixAddress(Napi::Env env, const std::string& path, sockaddr_un* addr, socklen_t* len) {
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr->sun_path)
    throw Napi::RangeError::New(env, "unix socket path is empty or longer than " +
                                         std::to_string(sizeof addr->sun_path - 1) + " bytes: " + path);
  memcpy(addr->sun_path, path.data(), path.size());  // a leading NUL makes a Linux abstract name
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (path[0] == '\0' ? 0 : 1));
}

int NewUnixSocket(Napi::Env env) {
#ifdef SOCK_CLOEXEC
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
#else
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd >= 0) SetCloexec(fd, true);
#endif
  if (fd < 0) ThrowErrno(env, errno, "socket");
  return fd;
}

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
#ifdef SOCK_CLOEXEC
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) ThrowErrno(env, errno, "socketpair");
#else
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) ThrowErrno(env, errno, "socketpair");
  SetCloexec(sv[0], true);
  SetCloexec(sv[1], true);
#endif
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, sv[0]));
  a.Set(1u, Napi::Number::New(env, sv[1]));
  return a;
}

Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
  std::string path = info[0].As<Napi::String>();
  int backlog = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 128;
  sockaddr_un addr;
  socklen_t len;
  FillUnixAddress(env, path, &addr, &len);
  int fd = NewUnixSocket(env);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(fd, backlog) != 0) {
    int e = errno;
    close(fd);
    ThrowErrno(env, e, "bind/listen");
  }
  SetNonblock(fd, true);
  return Napi::Number::New(env, fd);
}

Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "path must be a string");
  std::string path = info[0].As<Napi::String>();
  sockaddr_un addr;
  socklen_t len;
  FillUnixAddress(env, path, &addr, &len);
  int fd = NewUnixSocket(env);
  if (RetryEintr([&] { return connect(fd, reinterpret_cast<sockaddr*>(&addr), len); }) != 0) {
    int e = errno;
    close(fd);
    ThrowErrno(env, e, "connect");
  }
  return Napi::Number::New(env, fd);
}

// accept(fd): a new CLOEXEC fd, or null when no connection is pending.
Napi::Value Accept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  int c = RetryEintr([&] { return accept(fd, nullptr, nullptr); });
  if (c < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowErrno(env, errno, "accept");
  }
  SetCloexec(c, true);
  return Napi::Number::New(env, c);
}

// Puts `fds` into msg's control data as one SCM_RIGHTS message (storage in `control`).
void AttachFds(struct msghdr* msg, std::vector<char>* control, const std::vector<int>& fds) {
  control->assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
  msg->msg_control = control->data();
  msg->msg_controllen = control->size();
  struct cmsghdr* cm = CMSG_FIRSTHDR(msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
}

// The fds that arrived in msg's SCM_RIGHTS control data (CLOEXEC), as a JS array.
Napi::Array ReceivedFds(Napi::Env env, struct msghdr* msg) {
  Napi::Array fds = Napi::Array::New(env);
  uint32_t nfds = 0;
  for (struct cmsghdr* cm = CMSG_FIRSTHDR(msg); cm != nullptr; cm = CMSG_NXTHDR(msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int* p = reinterpret_cast<int*>(CMSG_DATA(cm));
    for (size_t i = 0; i < count; i++) {
#ifndef MSG_CMSG_CLOEXEC
      SetCloexec(p[i], true);
#endif
      fds.Set(nfds++, Napi::Number::New(env, p[i]));
    }
  }
  return fds;
}

// Waits until fd is ready for `events`; timeout_ms < 0 waits for ever. Returns false on timeout.
bool WaitFd(int fd, short events, int timeout_ms) {
  struct pollfd p = {fd, events, 0};
  int r = RetryEintr([&] { return poll(&p, 1, timeout_ms); });
  return r > 0;
}

// sendMsg(fd, buffer, fds?): writes the whole buffer (waiting if the fd is
// non-blocking and full); the fds travel with the first byte.
Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, "data must be a Buffer");
  Napi::Buffer<uint8_t> data = info[1].As<Napi::Buffer<uint8_t>>();
  std::vector<int> fds;
  if (info.Length() > 2 && info[2].IsArray()) {
    Napi::Array arr = info[2].As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); i++) fds.push_back(arr.Get(i).As<Napi::Number>().Int32Value());
  }
  if (fds.size() > kMaxFdsPerMessage) throw Napi::RangeError::New(env, "too many fds in one message");
  if (data.Length() == 0 && !fds.empty()) throw Napi::RangeError::New(env, "fds need at least one data byte");
  size_t sent = 0;
  bool fds_sent = fds.empty();
  while (sent < data.Length()) {
    struct iovec iov = {data.Data() + sent, data.Length() - sent};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    std::vector<char> control;
    if (!fds_sent) AttachFds(&msg, &control, fds);
#ifdef MSG_NOSIGNAL
    const int flags = MSG_NOSIGNAL;
#else
    const int flags = 0;
#endif
    ssize_t n = RetryEintr([&] { return sendmsg(fd, &msg, flags); });
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        WaitFd(fd, POLLOUT, -1);
        continue;
      }
      ThrowErrno(env, errno, "sendmsg");
    }
    fds_sent = true;
    sent += static_cast<size_t>(n);
  }
  return Napi::Number::New(env, static_cast<double>(sent));
}

// recvMsg(fd, maxBytes, timeoutMs?): { data, fds } with data.length === 0 at EOF;
// null if nothing arrived (non-blocking fd, or timeout elapsed).
Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  int64_t max = ArgInt64(info, 1, "maxBytes");
  int timeout = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : -2;
  if (max <= 0 || max > (1 << 30)) throw Napi::RangeError::New(env, "maxBytes out of range");
  if (timeout != -2 && !WaitFd(fd, POLLIN, timeout)) return env.Null();
  // Not zero-filled: only the bytes received are copied out.
  std::unique_ptr<uint8_t[]> storage(new uint8_t[static_cast<size_t>(max)]);
  uint8_t* data = storage.get();
  std::vector<char> control(CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage));
  struct iovec iov = {data, static_cast<size_t>(max)};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
#ifdef MSG_CMSG_CLOEXEC
  const int flags = MSG_CMSG_CLOEXEC;
#else
  const int flags = 0;
#endif
  ssize_t n = RetryEintr([&] { return recvmsg(fd, &msg, flags); });
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowErrno(env, errno, "recvmsg");
  }
  Napi::Array fds = ReceivedFds(env, &msg);
  uint32_t nfds = fds.Length();
  if (msg.msg_flags & MSG_CTRUNC) {
    for (uint32_t i = 0; i < nfds; i++) close(fds.Get(i).As<Napi::Number>().Int32Value());
    throw Napi::Error::New(env, "recvmsg: too many fds in one message (MSG_CTRUNC)");
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("data", Napi::Buffer<uint8_t>::Copy(env, data, static_cast<size_t>(n)));
  out.Set("fds", fds);
  return out;
}

// readExact(fd, n, timeoutMs?): exactly n bytes, waiting as needed. Throws an
// EOFError-named error if the peer closed first; null on timeout before any byte.
Napi::Value ReadExact(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  int64_t want = ArgInt64(info, 1, "length");
  int timeout = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : -1;
  if (want < 0 || want > (int64_t(1) << 32)) throw Napi::RangeError::New(env, "length out of range");
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(want));
  size_t got = 0;
  while (got < static_cast<size_t>(want)) {
    if (!WaitFd(fd, POLLIN, got == 0 ? timeout : -1)) return env.Null();
    ssize_t n = RetryEintr([&] { return read(fd, out.Data() + got, static_cast<size_t>(want) - got); });
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) continue;
      ThrowErrno(env, errno, "read");
    }
    if (n == 0) {
      Napi::Error e = Napi::Error::New(env, "EOF: the other end closed the connection");
      e.Set("name", Napi::String::New(env, "EOFError"));
      e.Set("bytesRead", Napi::Number::New(env, static_cast<double>(got)));
      throw e;
    }
    got += static_cast<size_t>(n);
  }
  return out;
}

// read(fd, max): a Buffer (empty at EOF), or null when nothing is available now.
Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  int64_t max = ArgInt64(info, 1, "maxBytes");
  if (max <= 0 || max > (1 << 30)) throw Napi::RangeError::New(env, "maxBytes out of range");
  std::vector<uint8_t> buf(static_cast<size_t>(max));
  ssize_t n = RetryEintr([&] { return read(fd, buf.data(), buf.size()); });
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowErrno(env, errno, "read");
  }
  return Napi::Buffer<uint8_t>::Copy(env, buf.data(), static_cast<size_t>(n));
}

// write(fd, buffer, offset?): bytes written now (0 if the fd would block).
Napi::Value Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, "data must be a Buffer");
  Napi::Buffer<uint8_t> data = info[1].As<Napi::Buffer<uint8_t>>();
  int64_t off = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int64Value() : 0;
  if (off < 0 || static_cast<size_t>(off) > data.Length()) throw Napi::RangeError::New(env, "offset out of range");
  ssize_t n = RetryEintr([&] { return write(fd, data.Data() + off, data.Length() - static_cast<size_t>(off)); });
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, 0);
    ThrowErrno(env, errno, "write");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value SetNonblockJs(const Napi::CallbackInfo& info) {
  if (SetNonblock(ArgInt(info, 0, "fd"), ArgBool(info, 1, true)) != 0) ThrowErrno(info.Env(), errno, "fcntl");
  return info.Env().Undefined();
}


// ---------------------------------------------------------------------------
// Connection I/O (src/connection.ts): reads into a caller's buffer, writes a
// header and a body in one call, TCP listen/connect.

// Whether fd is a socket (recvmsg/sendmsg work) rather than a pipe.
Napi::Value IsSocket(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  int type = 0;
  socklen_t len = sizeof type;
  bool sock = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0;
  return Napi::Boolean::New(info.Env(), sock);
}

// ---------------------------------------------------------------------------
// Adaptive spinning before a blocking read. Waking a sleeping process costs tens of
// microseconds (more on a VM); a peer that answers within a few microseconds is
// seen sooner by polling for a moment first. Per fd: after kMaxMisses spins in a
// row that found nothing (a slow peer) the fd sleeps at once, retrying a spin every
// kProbeEvery reads, so a slow or idle peer costs almost no CPU. The spin lasts twice
// the fd's recent wait (a moving average), within [kMinSpinNs, kMaxSpinNs]: a peer that
// answers a 64 KiB message needs ~100 us here, more than a fixed 50 us spin gave it, and
// every miss then cost two sleeps and wake-ups. Never on one CPU; MP_NOSPIN in the
// environment turns it off.

constexpr int64_t kMinSpinNs = 50 * 1000;
constexpr int64_t kMaxSpinNs = 250 * 1000;
constexpr uint8_t kMaxMisses = 3;
constexpr uint8_t kProbeEvery = 32;
constexpr int kSpinFds = 4096;
struct SpinState {
  uint8_t misses;
  uint8_t skipped;
  uint32_t avg_wait_ns;  // moving average (1/8 weight) of waits for data, capped at kMaxSpinNs
};
SpinState g_spin[kSpinFds];

int64_t MonotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

bool SpinAllowed(int fd) {
  static const bool multi_cpu = sysconf(_SC_NPROCESSORS_ONLN) > 1 && getenv("MP_NOSPIN") == nullptr;
  if (!multi_cpu || fd < 0 || fd >= kSpinFds) return false;
  SpinState& st = g_spin[fd];
  if (st.misses < kMaxMisses) return true;
  if (++st.skipped < kProbeEvery) return false;
  st.skipped = 0;
  return true;
}

// A read on fd waited `ns` for its data (spinning or asleep).
void RecordWait(int fd, int64_t ns) {
  if (fd < 0 || fd >= kSpinFds) return;
  SpinState& st = g_spin[fd];
  const int64_t sample = std::min(ns, kMaxSpinNs);
  st.avg_wait_ns = static_cast<uint32_t>(st.avg_wait_ns + (sample - static_cast<int64_t>(st.avg_wait_ns)) / 8);
}

// Polls fd (without sleeping) for up to twice its recent wait; records the outcome.
bool SpinUntilReadable(int fd) {
  struct pollfd p = {fd, POLLIN, 0};
  const int64_t budget = std::clamp(2 * static_cast<int64_t>(g_spin[fd].avg_wait_ns), kMinSpinNs, kMaxSpinNs);
  const int64_t deadline = MonotonicNs() + budget;
  bool ready = false;
  do {
    if (poll(&p, 1, 0) != 0) {  // ready, or an error the read will report
      ready = true;
      break;
    }
    // Hand the CPU to anything runnable here (the peer, on a busy machine): spinning
    // without yielding made a round trip 10x slower next to one busy process.
    sched_yield();
  } while (MonotonicNs() < deadline);
  SpinState& st = g_spin[fd];
  if (ready) st.misses = 0;
  else if (st.misses < kMaxMisses) st.misses++;
  return ready;
}

// connRecv(fd, buf, offset, length, isSocket, timeoutMs): reads at most `length`
// bytes into buf[offset..]. Returns the count (0 at EOF), -1 when nothing arrived
// (timeoutMs 0: would block; > 0: timed out; < 0 waits for ever), or
// [count, fds] when fds arrived with the bytes (SCM_RIGHTS).
Napi::Value ConnRecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, "buf must be a Buffer");
  Napi::Buffer<uint8_t> buf = info[1].As<Napi::Buffer<uint8_t>>();
  int64_t off = ArgInt64(info, 2, "offset");
  int64_t len = ArgInt64(info, 3, "length");
  bool is_socket = ArgBool(info, 4, true);
  int timeout = info.Length() > 5 && info[5].IsNumber() ? info[5].As<Napi::Number>().Int32Value() : 0;
  if (off < 0 || len <= 0 || static_cast<uint64_t>(off + len) > buf.Length())
    throw Napi::RangeError::New(env, "offset/length out of range");
  alignas(struct cmsghdr) static thread_local char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  bool sleep_in_recv = false;  // after a spin found nothing: let recvmsg itself sleep
  int64_t wait_start = 0;      // when this read began to wait for data
  for (;;) {
    ssize_t n;
    struct msghdr msg;
    struct iovec iov = {buf.Data() + off, static_cast<size_t>(len)};
    if (is_socket) {
      memset(&msg, 0, sizeof msg);
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
#ifdef MSG_CMSG_CLOEXEC
      const int base = MSG_CMSG_CLOEXEC;
#else
      const int base = 0;
#endif
      // Waiting for ever on a blocking socket: recvmsg may sleep (saves a poll round trip).
      const int flags = base | (sleep_in_recv ? 0 : MSG_DONTWAIT);
      n = RetryEintr([&] { return recvmsg(fd, &msg, flags); });
    } else {
      n = RetryEintr([&] { return read(fd, buf.Data() + off, static_cast<size_t>(len)); });
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (timeout == 0) return Napi::Number::New(env, -1);
        if (wait_start == 0) wait_start = MonotonicNs();
        if (!sleep_in_recv && SpinAllowed(fd) && SpinUntilReadable(fd)) continue;
        if (timeout < 0 && is_socket && !sleep_in_recv) {
          sleep_in_recv = true;  // a blocking socket sleeps in recvmsg; a non-blocking one says EAGAIN again
          continue;
        }
        if (!WaitFd(fd, POLLIN, timeout < 0 ? -1 : timeout)) return Napi::Number::New(env, -1);
        continue;
      }
      if (errno == ECONNRESET) return Napi::Number::New(env, 0);  // as EOF
      ThrowErrno(env, errno, is_socket ? "recvmsg" : "read");
    }
    if (wait_start != 0) RecordWait(fd, MonotonicNs() - wait_start);
    if (!is_socket || msg.msg_controllen == 0) return Napi::Number::New(env, static_cast<double>(n));
    Napi::Array fds = ReceivedFds(env, &msg);
    uint32_t nfds = fds.Length();
    if (nfds == 0) return Napi::Number::New(env, static_cast<double>(n));
    Napi::Array out = Napi::Array::New(env, 2);
    out.Set(0u, Napi::Number::New(env, static_cast<double>(n)));
    out.Set(1u, fds);
    return out;
  }
}

// connSend(fd, header, body, offset, length, fds, isSocket): writes header then
// body[offset, offset+length) completely, waiting while the fd is full; fds travel
// with the first byte. Throws on error (EPIPE when the reader is gone).
// Writes parts[0] then parts[1] completely, waiting while the fd is full; fds travel
// with the first byte. Throws on error (EPIPE when the reader is gone).
void SendAll(Napi::Env env, int fd, const uint8_t* const parts[2], const size_t sizes[2], const std::vector<int>& fds,
             bool is_socket) {
  size_t done[2] = {0, 0};
  bool fds_sent = fds.empty();
  std::vector<char> control;
  while (done[0] < sizes[0] || done[1] < sizes[1]) {
    struct iovec iov[2];
    int niov = 0;
    for (int i = 0; i < 2; i++) {
      if (done[i] < sizes[i]) {
        iov[niov].iov_base = const_cast<uint8_t*>(parts[i] + done[i]);
        iov[niov].iov_len = sizes[i] - done[i];
        niov++;
      }
    }
    ssize_t n;
    if (is_socket) {
      struct msghdr msg;
      memset(&msg, 0, sizeof msg);
      msg.msg_iov = iov;
      msg.msg_iovlen = niov;
      if (!fds_sent) AttachFds(&msg, &control, fds);
#ifdef MSG_NOSIGNAL
      const int flags = MSG_NOSIGNAL | MSG_DONTWAIT;
#else
      const int flags = MSG_DONTWAIT;
#endif
      n = RetryEintr([&] { return sendmsg(fd, &msg, flags); });
    } else {
      n = RetryEintr([&] { return writev(fd, iov, niov); });
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        WaitFd(fd, POLLOUT, -1);
        continue;
      }
      ThrowErrno(env, errno, is_socket ? "sendmsg" : "write");
    }
    fds_sent = true;
    size_t k = static_cast<size_t>(n);
    for (int i = 0; i < 2 && k > 0; i++) {
      size_t take = std::min(k, sizes[i] - done[i]);
      done[i] += take;
      k -= take;
    }
  }
}

Napi::Value ConnSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  if (info.Length() < 3 || !info[1].IsBuffer() || !info[2].IsBuffer())
    throw Napi::TypeError::New(env, "header and body must be Buffers");
  Napi::Buffer<uint8_t> header = info[1].As<Napi::Buffer<uint8_t>>();
  Napi::Buffer<uint8_t> body = info[2].As<Napi::Buffer<uint8_t>>();
  int64_t off = ArgInt64(info, 3, "offset");
  int64_t len = ArgInt64(info, 4, "length");
  if (off < 0 || len < 0 || static_cast<uint64_t>(off + len) > body.Length())
    throw Napi::RangeError::New(env, "offset/length out of range");
  std::vector<int> fds;
  if (info.Length() > 5 && info[5].IsArray()) {
    Napi::Array arr = info[5].As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); i++) fds.push_back(arr.Get(i).As<Napi::Number>().Int32Value());
  }
  bool is_socket = ArgBool(info, 6, true);
  if (fds.size() > kMaxFdsPerMessage) throw Napi::RangeError::New(env, "too many fds in one message");
  if (!fds.empty() && !is_socket) throw Napi::TypeError::New(env, "fds can only be sent over a socket, not a pipe");
  const uint8_t* const parts[2] = {header.Data(), body.Data() + off};
  const size_t sizes[2] = {header.Length(), static_cast<size_t>(len)};
  SendAll(env, fd, parts, sizes, fds, is_socket);
  return env.Undefined();
}

// connSendText(fd, prefix, text, isSocket): one message of `prefix` bytes (at most 8)
// then `text` as UTF-8, framed with its 4-byte length: the common small send() in
// one call, with no Buffer made in JS.
Napi::Value ConnSendText(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgInt(info, 0, "fd");
  if (info.Length() < 3 || !info[1].IsBuffer() || !info[2].IsString())
    throw Napi::TypeError::New(env, "prefix must be a Buffer and text a string");
  Napi::Buffer<uint8_t> prefix = info[1].As<Napi::Buffer<uint8_t>>();
  bool is_socket = ArgBool(info, 3, true);
  if (prefix.Length() > 8) throw Napi::RangeError::New(env, "prefix too long");
  size_t text_len = 0;
  if (napi_get_value_string_utf8(env, info[2], nullptr, 0, &text_len) != napi_ok) throw Napi::Error::New(env, "bad text");
  const size_t body_len = prefix.Length() + text_len;
  if (body_len > 0x7fffffff) throw Napi::RangeError::New(env, "text too long for connSendText");
  thread_local std::vector<uint8_t> frame;
  frame.resize(4 + body_len + 1);  // + the NUL napi writes
  frame[0] = static_cast<uint8_t>(body_len >> 24);
  frame[1] = static_cast<uint8_t>(body_len >> 16);
  frame[2] = static_cast<uint8_t>(body_len >> 8);
  frame[3] = static_cast<uint8_t>(body_len);
  memcpy(frame.data() + 4, prefix.Data(), prefix.Length());
  size_t copied = 0;
  char* text_at = reinterpret_cast<char*>(frame.data() + 4 + prefix.Length());
  if (napi_get_value_string_utf8(env, info[2], text_at, text_len + 1, &copied) != napi_ok || copied != text_len)
    throw Napi::Error::New(env, "could not encode text");
  const uint8_t* const parts[2] = {frame.data(), nullptr};
  const size_t sizes[2] = {4 + body_len, 0};
  SendAll(env, fd, parts, sizes, {}, is_socket);
  if (frame.capacity() > (1u << 20)) std::vector<uint8_t>().swap(frame);  // do not keep a big one
  return env.Undefined();
}

int NewInetSocket(Napi::Env env, int family) {
#ifdef SOCK_CLOEXEC
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
#else
  int fd = socket(family, SOCK_STREAM, 0);
  if (fd >= 0) SetCloexec(fd, true);
#endif
  if (fd < 0) ThrowErrno(env, errno, "socket");
  return fd;
}

// Parses a numeric IPv4/IPv6 host into a sockaddr; throws on a non-numeric one.
void FillInetAddress(Napi::Env env, const std::string& host, int port, sockaddr_storage* ss, socklen_t* len) {
  memset(ss, 0, sizeof *ss);
  if (port < 0 || port > 65535) throw Napi::RangeError::New(env, "port must be in 0..65535");
  auto* a4 = reinterpret_cast<sockaddr_in*>(ss);
  auto* a6 = reinterpret_cast<sockaddr_in6*>(ss);
  if (inet_pton(AF_INET, host.c_str(), &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons(static_cast<uint16_t>(port));
    *len = sizeof *a4;
  } else if (inet_pton(AF_INET6, host.c_str(), &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(static_cast<uint16_t>(port));
    *len = sizeof *a6;
  } else {
    throw Napi::TypeError::New(env, "not a numeric IP address: " + host);
  }
}

Napi::Value SockAddrToJs(Napi::Env env, const sockaddr_storage& ss) {
  char text[INET6_ADDRSTRLEN] = {0};
  int port = 0;
  if (ss.ss_family == AF_INET) {
    auto* a4 = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a4->sin_addr, text, sizeof text);
    port = ntohs(a4->sin_port);
  } else {
    auto* a6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a6->sin6_addr, text, sizeof text);
    port = ntohs(a6->sin6_port);
  }
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::String::New(env, text));
  a.Set(1u, Napi::Number::New(env, port));
  return a;
}

// tcpListen(host, port, backlog?): [fd, [host, port]] of a bound, listening, non-blocking socket.
Napi::Value TcpListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "host must be a string");
  std::string host = info[0].As<Napi::String>();
  int port = ArgInt(info, 1, "port");
  int backlog = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : 128;
  sockaddr_storage ss;
  socklen_t len;
  FillInetAddress(env, host, port, &ss, &len);
  int fd = NewInetSocket(env, ss.ss_family);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(fd, backlog) != 0) {
    int e = errno;
    close(fd);
    ThrowErrno(env, e, "bind/listen");
  }
  sockaddr_storage bound;
  socklen_t blen = sizeof bound;
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
  SetNonblock(fd, true);
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, fd));
  out.Set(1u, SockAddrToJs(env, bound));
  return out;
}

// tcpConnect(host, port): [fd, inProgress] of a non-blocking socket whose connect has started.
Napi::Value TcpConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "host must be a string");
  std::string host = info[0].As<Napi::String>();
  int port = ArgInt(info, 1, "port");
  sockaddr_storage ss;
  socklen_t len;
  FillInetAddress(env, host, port, &ss, &len);
  int fd = NewInetSocket(env, ss.ss_family);
  SetNonblock(fd, true);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int r = RetryEintr([&] { return connect(fd, reinterpret_cast<sockaddr*>(&ss), len); });
  if (r != 0 && errno != EINPROGRESS) {
    int e = errno;
    close(fd);
    ThrowErrno(env, e, "connect");
  }
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(0u, Napi::Number::New(env, fd));
  out.Set(1u, Napi::Boolean::New(env, r != 0));
  return out;
}

// socketError(fd): the pending SO_ERROR of a socket as a thrown system error, or undefined.
Napi::Value SocketError(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err != 0) ThrowErrno(info.Env(), err, "connect");
  return info.Env().Undefined();
}

// setNodelay(fd): TCP_NODELAY on an accepted TCP socket (ignored for others).
Napi::Value SetNodelay(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0, "fd");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return info.Env().Undefined();
}

}  // namespace

void InitSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("isSocket", Napi::Function::New(env, IsSocket, "isSocket"));
  exports.Set("connRecv", Napi::Function::New(env, ConnRecv, "connRecv"));
  exports.Set("connSend", Napi::Function::New(env, ConnSend, "connSend"));
  exports.Set("connSendText", Napi::Function::New(env, ConnSendText, "connSendText"));
  exports.Set("tcpListen", Napi::Function::New(env, TcpListen, "tcpListen"));
  exports.Set("tcpConnect", Napi::Function::New(env, TcpConnect, "tcpConnect"));
  exports.Set("socketError", Napi::Function::New(env, SocketError, "socketError"));
  exports.Set("setNodelay", Napi::Function::New(env, SetNodelay, "setNodelay"));
  exports.Set("socketpair", Napi::Function::New(env, SocketPair, "socketpair"));
  exports.Set("unixListen", Napi::Function::New(env, UnixListen, "unixListen"));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("accept", Napi::Function::New(env, Accept, "accept"));
  exports.Set("sendMsg", Napi::Function::New(env, SendMsg, "sendMsg"));
  exports.Set("recvMsg", Napi::Function::New(env, RecvMsg, "recvMsg"));
  exports.Set("readExact", Napi::Function::New(env, ReadExact, "readExact"));
  exports.Set("read", Napi::Function::New(env, Read, "read"));
  exports.Set("write", Napi::Function::New(env, Write, "write"));
  exports.Set("setNonblock", Napi::Function::New(env, SetNonblockJs, "setNonblock"));
}

}  // namespace mp
