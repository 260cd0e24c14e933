// Unix sockets and raw fd I/O: socketpair, listen/connect, SCM_RIGHTS fd passing.
#include "common.h"
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
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
    if (!fds_sent) {
      control.assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      struct cmsghdr* cm = CMSG_FIRSTHDR(&msg);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      memcpy(CMSG_DATA(cm), fds.data(), sizeof(int) * fds.size());
    }
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
  std::vector<uint8_t> buf(static_cast<size_t>(max));
  std::vector<char> control(CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage));
  struct iovec iov = {buf.data(), buf.size()};
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
  Napi::Array fds = Napi::Array::New(env);
  uint32_t nfds = 0;
  for (struct cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
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
  if (msg.msg_flags & MSG_CTRUNC) {
    for (uint32_t i = 0; i < nfds; i++) close(fds.Get(i).As<Napi::Number>().Int32Value());
    throw Napi::Error::New(env, "recvmsg: too many fds in one message (MSG_CTRUNC)");
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("data", Napi::Buffer<uint8_t>::Copy(env, buf.data(), static_cast<size_t>(n)));
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

}  // namespace

void InitSocket(Napi::Env env, Napi::Object exports) {
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
