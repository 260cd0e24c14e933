{
  # GYP_DEFINES=mp_park=0 leaves out the per-Node-version park addon (prebuilds are N-API only).
  "variables": { "mp_park%": 1 },
  "targets": [
    {
      # The N-API part: loads unchanged in every Node version >= 20.
      "target_name": "mp_native",
      "sources": [
        "native/addon.cc",
        "native/common.cc",
        "native/fork.cc",
        "native/socket.cc",
        "native/poll.cc",
        "native/semaphore.cc",
        "native/shared_memory.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-fexceptions", "-fvisibility=hidden"],
      "conditions": [
        # -z now: every symbol is bound at load, so a forked child does not run the
        # dynamic linker (and write its tables) on its first calls.
        ["OS=='linux'", { "libraries": ["-ldl", "-lpthread", "-lrt"], "ldflags": ["-Wl,-z,now"] }],
        ["OS=='mac'", {
          "xcode_settings": {
            "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
            "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
            "MACOSX_DEPLOYMENT_TARGET": "11.0",
            "WARNING_CFLAGS": ["-Wall", "-Wextra"]
          }
        }],
        ["OS=='win'", {
          "sources!": ["native/fork.cc", "native/socket.cc", "native/poll.cc",
                       "native/semaphore.cc", "native/shared_memory.cc"],
          "sources": ["native/win/win_util.cc", "native/win/process_win.cc",
                      "native/win/semaphore_win.cc", "native/win/shared_memory_win.cc",
                      "native/win/socket_win.cc", "native/win/named_pipe_win.cc",
                      "native/win/poll_win.cc"],
          "msvs_settings": { "VCCLCompilerTool": { "ExceptionHandling": 1 } }
        }]
      ]
    }
  ],
  "conditions": [
    ["OS!='win' and mp_park==1", {
      "targets": [
        {
          # Parks V8's platform threads around fork(). Uses Node's C++ API, so it is
          # built against the headers of the Node that will load it (one per version).
          "target_name": "mp_fork_park",
          "sources": ["native/park.cc"],
          "cflags_cc": ["-Wall", "-Wextra", "-Wno-cast-function-type", "-fvisibility=hidden"],
          "conditions": [["OS=='linux'", { "ldflags": ["-Wl,-z,now"] }]],
          "xcode_settings": { "MACOSX_DEPLOYMENT_TARGET": "11.0" }
        }
      ]
    }]
  ]
}
