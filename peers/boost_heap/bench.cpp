// Peer benchmark: allocation in a Boost.Interprocess managed_shared_memory.
//
// Measures alloc+free PAIRS (segment.allocate(n) then segment.deallocate(p))
// in one 256 MiB managed segment, for several block sizes and three modes:
//
//   1t  one thread
//   2t  two threads of this process, both on the same segment object
//   2p  two processes: this one and a fork()ed child that re-opens the
//       segment with open_only
//
// For each (size, mode) the run is calibrated so that one batch takes about
// 75 ms, then 11 batches (see --batches) are timed and the median is printed:
//
//   boost_ipc size=16 mode=1t ns_per_pair=123.4 mops_total=8.10
//
// ns_per_pair is per thread: the wall time of a batch divided by the pairs
// ONE worker did in it (the latency of a pair under contention).
// mops_total is millions of pairs per second summed over all workers.
// Progress notes go to stderr; stdout carries only the result lines.
//
// Options: --sizes 16,256  --modes 1t,2p  --batches N  (also --opt=value)
//
// Linux only (fork, prctl, POSIX shared memory).

#include <boost/interprocess/managed_shared_memory.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

namespace bip = boost::interprocess;

namespace {

constexpr std::size_t kSegmentBytes = std::size_t{256} << 20;
constexpr double kTargetBatchNs = 75e6;      // aim for ~75 ms per batch
constexpr double kCalibrateMinNs = 10e6;     // calibration batch at least 10 ms
constexpr double kWarmUpNs = 150e6;          // warm up each case for >= 150 ms
constexpr std::uint64_t kMinPairs = 1000;
constexpr const char* kControlName = "shmkit_bench_control";

// ---------------------------------------------------------------- timing

// steady_clock is CLOCK_MONOTONIC on Linux: one clock for the whole machine,
// so timestamps taken in the parent and in the forked child can be compared.
std::uint64_t now_ns() {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(
            std::chrono::steady_clock::now().time_since_epoch())
            .count());
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
}

// ---------------------------------------------------------------- the work

// Everything a batch returns is folded in here, so that the allocations and
// the byte written into each block have a visible effect.
std::atomic<std::uint64_t> g_sink{0};

// `pairs` times: allocate `size` bytes, touch one byte, free it.
std::uint64_t run_pairs(bip::managed_shared_memory& seg, std::size_t size,
                        std::uint64_t pairs) {
    std::uint64_t acc = 0;
    for (std::uint64_t i = 0; i < pairs; ++i) {
        void* p = seg.allocate(size);  // throws bad_alloc when full
        auto* byte = static_cast<volatile unsigned char*>(p);
        *byte = static_cast<unsigned char>(i);
        acc += *byte ^ reinterpret_cast<std::uintptr_t>(p);
        seg.deallocate(p);
    }
    return acc;
}

// ---------------------------------------------------------------- two workers

// Lives in the segment, so that the second worker (thread or process) and the
// leader (this process's main thread) can hand batches to each other. Only
// lock-free atomics: those work across processes on a shared mapping.
struct Control {
    std::atomic<std::uint32_t> ready{0};  // follower attached and waiting
    std::atomic<std::uint32_t> go{0};     // batch ticket, bumped by the leader
    std::atomic<std::uint32_t> done{0};   // follower echoes the ticket at the end
    std::atomic<std::uint32_t> quit{0};   // leader: no more batches
    std::atomic<std::uint64_t> size{0};   // block size of the batch
    std::atomic<std::uint64_t> pairs{0};  // pairs per worker in the batch
    std::atomic<std::uint64_t> f_start{0};  // follower's batch start (now_ns)
    std::atomic<std::uint64_t> f_end{0};    // follower's batch end (now_ns)
};
static_assert(std::atomic<std::uint32_t>::is_always_lock_free, "need lock-free atomics");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "need lock-free atomics");

// The second worker: waits for a ticket, runs the batch, reports its start and
// end times, until told to quit.
void follower_loop(bip::managed_shared_memory& seg, Control& c) {
    c.ready.store(1, std::memory_order_release);
    std::uint32_t seen = 0;
    for (;;) {
        std::uint32_t ticket;
        while ((ticket = c.go.load(std::memory_order_acquire)) == seen) {
            if (c.quit.load(std::memory_order_acquire)) return;
            cpu_relax();
        }
        seen = ticket;
        const std::size_t size = c.size.load(std::memory_order_relaxed);
        const std::uint64_t pairs = c.pairs.load(std::memory_order_relaxed);
        const std::uint64_t start = now_ns();
        const std::uint64_t acc = run_pairs(seg, size, pairs);
        const std::uint64_t end = now_ns();
        g_sink.fetch_add(acc, std::memory_order_relaxed);
        c.f_start.store(start, std::memory_order_relaxed);
        c.f_end.store(end, std::memory_order_relaxed);
        c.done.store(ticket, std::memory_order_release);  // publishes the times
    }
}

enum class Mode { OneThread, TwoThreads, TwoProcesses };

const char* mode_name(Mode m) {
    switch (m) {
        case Mode::OneThread: return "1t";
        case Mode::TwoThreads: return "2t";
        case Mode::TwoProcesses: return "2p";
    }
    return "?";
}

// One (size, mode) case: starts the second worker if the mode has one, hands
// it batches, and stops it again.
class Case {
public:
    Case(bip::managed_shared_memory& seg, Control& ctl, const std::string& name,
         std::size_t size, Mode mode)
        : seg_(seg), ctl_(ctl), size_(size), mode_(mode) {
        ctl_.ready.store(0);
        ctl_.go.store(0);
        ctl_.done.store(0);
        ctl_.quit.store(0);
        ctl_.size.store(size);
        if (mode_ == Mode::TwoThreads) {
            thread_ = std::thread([this] { follower_loop(seg_, ctl_); });
        } else if (mode_ == Mode::TwoProcesses) {
            start_child(name);
        }
        // Wait until the follower is attached (the child may take a moment).
        if (mode_ != Mode::OneThread) {
            while (!ctl_.ready.load(std::memory_order_acquire)) {
                check_child();
                std::this_thread::yield();
            }
        }
    }

    // Errors while unwinding are dropped: the first one is already in flight.
    ~Case() {
        try {
            stop();
        } catch (...) {
        }
    }

    int workers() const { return mode_ == Mode::OneThread ? 1 : 2; }

    // Runs one batch of `pairs` pairs on every worker; returns the batch's
    // wall time in ns: from the first worker's start to the last one's end.
    double batch(std::uint64_t pairs) {
        if (mode_ == Mode::OneThread) {
            const std::uint64_t start = now_ns();
            g_sink.fetch_add(run_pairs(seg_, size_, pairs), std::memory_order_relaxed);
            return static_cast<double>(now_ns() - start);
        }
        ctl_.pairs.store(pairs, std::memory_order_relaxed);
        // The release in fetch_add publishes `pairs` to the follower.
        const std::uint32_t ticket = ctl_.go.fetch_add(1, std::memory_order_acq_rel) + 1;
        const std::uint64_t start = now_ns();
        g_sink.fetch_add(run_pairs(seg_, size_, pairs), std::memory_order_relaxed);
        const std::uint64_t end = now_ns();
        for (std::uint64_t spins = 0;
             ctl_.done.load(std::memory_order_acquire) != ticket; ++spins) {
            if ((spins & 0xFFFFF) == 0xFFFFF) check_child();
            cpu_relax();
        }
        const std::uint64_t f_start = ctl_.f_start.load(std::memory_order_relaxed);
        const std::uint64_t f_end = ctl_.f_end.load(std::memory_order_relaxed);
        return static_cast<double>(std::max(end, f_end) - std::min(start, f_start));
    }

    // Tells the follower to quit and reaps it. Safe to call twice.
    void stop() {
        ctl_.quit.store(1, std::memory_order_release);
        if (thread_.joinable()) thread_.join();
        if (child_ > 0) {
            int status = 0;
            const pid_t pid = child_;
            child_ = 0;
            if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
                WEXITSTATUS(status) != 0) {
                throw std::runtime_error("2p child did not exit cleanly");
            }
        }
    }

private:
    void start_child(const std::string& name) {
        std::fflush(nullptr);  // no buffered output duplicated into the child
        const pid_t parent = getpid();
        const pid_t pid = fork();
        if (pid < 0) throw std::runtime_error("fork failed");
        if (pid > 0) {
            child_ = pid;
            return;
        }
        // Child. Die with the parent rather than spin forever as an orphan.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
        int rc = 0;
        try {
            // Re-open the segment by name, like an unrelated process would; it
            // may be mapped at another address (Boost uses offset pointers).
            bip::managed_shared_memory own(bip::open_only, name.c_str());
            Control* ctl = own.find<Control>(kControlName).first;
            if (ctl == nullptr) throw std::runtime_error("control block not found");
            follower_loop(own, *ctl);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "2p child: %s\n", e.what());
            rc = 2;
        }
        // _exit: skip the parent's atexit/destructors (they remove the segment).
        _exit(rc);
    }

    // Throws if the forked child died (so the leader does not spin forever).
    void check_child() {
        if (child_ <= 0) return;
        int status = 0;
        if (waitpid(child_, &status, WNOHANG) == child_) {
            child_ = 0;
            throw std::runtime_error("2p child exited early");
        }
    }

    bip::managed_shared_memory& seg_;
    Control& ctl_;
    std::size_t size_;
    Mode mode_;
    std::thread thread_;
    pid_t child_ = 0;
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Calibrates, runs `batches` timed batches and prints the result line.
void run_case(bip::managed_shared_memory& seg, Control& ctl, const std::string& name,
              std::size_t size, Mode mode, int batches) {
    Case c(seg, ctl, name, size, mode);

    // Grow a batch until it lasts long enough to time.
    std::uint64_t pairs = kMinPairs;
    while (c.batch(pairs) < kCalibrateMinNs) pairs *= 4;

    // Keep warming up for a while (the new thread or child faults its pages
    // in, caches and the allocator's free lists settle), then calibrate on the
    // median rate of the last three warm-up batches rather than on one batch.
    std::vector<double> warm;
    const std::uint64_t warm_start = now_ns();
    do {
        warm.push_back(c.batch(pairs) / static_cast<double>(pairs));
    } while (warm.size() < 3 || static_cast<double>(now_ns() - warm_start) < kWarmUpNs);
    const double calib_ns = median(std::vector<double>(warm.end() - 3, warm.end()));
    pairs = std::max<std::uint64_t>(kMinPairs,
                                    static_cast<std::uint64_t>(kTargetBatchNs / calib_ns));

    std::vector<double> ns_per_pair;
    for (int b = 0; b < batches; ++b) {
        ns_per_pair.push_back(c.batch(pairs) / static_cast<double>(pairs));
    }
    c.stop();

    const double med = median(ns_per_pair);
    const double mops_total = c.workers() * 1e3 / med;
    std::fprintf(stderr, "  (%s size=%zu: %d batches x %llu pairs per worker, min %.1f max %.1f ns)\n",
                 mode_name(mode), size, batches, static_cast<unsigned long long>(pairs),
                 *std::min_element(ns_per_pair.begin(), ns_per_pair.end()),
                 *std::max_element(ns_per_pair.begin(), ns_per_pair.end()));
    std::printf("boost_ipc size=%zu mode=%s ns_per_pair=%.1f mops_total=%.2f\n", size,
                mode_name(mode), med, mops_total);
    std::fflush(stdout);
}

// ---------------------------------------------------------------- cleanup

// The segment's POSIX name ("/<name>"), kept in a static buffer so that the
// signal handler can unlink it without allocating.
char g_shm_path[128];

extern "C" void on_signal(int sig) {
    shm_unlink(g_shm_path);  // async-signal-safe
    std::signal(sig, SIG_DFL);
    std::raise(sig);
}

// Removes the segment's name when main returns or throws.
struct SegmentRemover {
    std::string name;
    ~SegmentRemover() { bip::shared_memory_object::remove(name.c_str()); }
};

// ---------------------------------------------------------------- options

struct Options {
    std::vector<std::size_t> sizes{16, 256, 4096, 65536};
    std::vector<Mode> modes{Mode::OneThread, Mode::TwoThreads, Mode::TwoProcesses};
    int batches = 11;
};

std::vector<std::string> split_commas(const std::string& s) {
    std::vector<std::string> out;
    std::size_t from = 0;
    for (;;) {
        const std::size_t comma = s.find(',', from);
        out.push_back(s.substr(from, comma - from));
        if (comma == std::string::npos) return out;
        from = comma + 1;
    }
}

[[noreturn]] void usage(const char* prog, const std::string& error) {
    if (!error.empty()) std::fprintf(stderr, "error: %s\n", error.c_str());
    std::fprintf(stderr,
                 "usage: %s [--sizes 16,256,4096,65536] [--modes 1t,2t,2p] [--batches 11]\n",
                 prog);
    std::exit(error.empty() ? 0 : 2);
}

Options parse_args(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        std::string value;
        if (arg == "-h" || arg == "--help") usage(argv[0], "");
        const std::size_t eq = arg.find('=');
        if (eq != std::string::npos) {
            value = arg.substr(eq + 1);
            arg.resize(eq);
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            usage(argv[0], arg + " needs a value");
        }
        if (arg == "--sizes") {
            o.sizes.clear();
            for (const std::string& s : split_commas(value)) {
                char* end = nullptr;
                const unsigned long long n = std::strtoull(s.c_str(), &end, 10);
                if (s.empty() || *end != '\0' || n == 0 || n > kSegmentBytes / 4) {
                    usage(argv[0], "bad size '" + s + "'");
                }
                o.sizes.push_back(static_cast<std::size_t>(n));
            }
        } else if (arg == "--modes") {
            o.modes.clear();
            for (const std::string& s : split_commas(value)) {
                if (s == "1t") o.modes.push_back(Mode::OneThread);
                else if (s == "2t") o.modes.push_back(Mode::TwoThreads);
                else if (s == "2p") o.modes.push_back(Mode::TwoProcesses);
                else usage(argv[0], "bad mode '" + s + "' (1t, 2t or 2p)");
            }
        } else if (arg == "--batches") {
            char* end = nullptr;
            const long n = std::strtol(value.c_str(), &end, 10);
            if (value.empty() || *end != '\0' || n < 1 || n > 1000) {
                usage(argv[0], "bad batch count '" + value + "'");
            }
            o.batches = static_cast<int>(n);
        } else {
            usage(argv[0], "unknown option " + arg);
        }
    }
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    const Options opts = parse_args(argc, argv);

    const std::string name = "shmkit_boost_bench_" + std::to_string(getpid());
    std::snprintf(g_shm_path, sizeof g_shm_path, "/%s", name.c_str());
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::signal(SIGHUP, on_signal);

    try {
        bip::shared_memory_object::remove(name.c_str());  // a stale one from a reused pid
        SegmentRemover remover{name};
        bip::managed_shared_memory seg(bip::create_only, name.c_str(), kSegmentBytes);
        Control* ctl = seg.construct<Control>(kControlName)();

        std::fprintf(stderr, "boost %d.%d.%d, segment %s, %zu MiB, %d batches per case\n",
                     BOOST_VERSION / 100000, BOOST_VERSION / 100 % 1000, BOOST_VERSION % 100,
                     name.c_str(), kSegmentBytes >> 20, opts.batches);
        for (const std::size_t size : opts.sizes) {
            for (const Mode mode : opts.modes) {
                run_case(seg, *ctl, name, size, mode, opts.batches);
            }
        }
        seg.destroy<Control>(kControlName);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "boost_heap_bench: %s\n", e.what());
        return 1;
    }
    std::fprintf(stderr, "sink %llu\n", static_cast<unsigned long long>(g_sink.load()));
    return 0;
}
