// A thread-per-CUDA-thread emulation of the CUDA C that minivit's row kernels use, so that
// g++ can compile fused_cuda.row_kernel_source() unchanged and run it on the CPU.
// Used by tests/test_fused_cuda_emulation.py; not a general CUDA emulator.
//
// * Every CUDA thread of a block is a std::thread; the blocks of a grid run one after
//   another, so a function-static array is storage shared by one block (__shared__).
// * threadIdx / blockIdx are thread_local, blockDim / gridDim global (one launch at a time).
// * __syncthreads is a barrier over the block's threads, __shfl_xor_sync one over the warp's
//   32 lanes: each lane writes its value to the warp's buffer, waits, reads its partner's
//   slot, and waits again before the buffer can be reused.
// * A thread that returns leaves both barriers (as an exited GPU thread no longer holds a
//   barrier up). A __syncthreads reached after some thread of the block exited, or a
//   full-mask shuffle after a lane of the warp exited, is reported as an error: the kernels
//   promise that a row's threads leave together, before any barrier.
// * A barrier that is not reached by every thread within a time limit (a deadlock on a GPU)
//   is reported, and every barrier then lets its waiters go, so the launch still ends.
// What this shows: the kernels' index arithmetic, reductions and barriers compute the right
// numbers under this one legal schedule. It says nothing of GPU scheduling, the GPU memory
// model, speed, or NVRTC's code generation.
#pragma once
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace emu {

struct uint3 { unsigned x, y, z; };

thread_local uint3 thread_idx, block_idx;
uint3 block_dim, grid_dim;

std::atomic<bool> aborted{false};
std::mutex error_mutex;
std::string first_error;
double timeout_s = 60.0;

inline void fail(const std::string& what) {
    std::lock_guard<std::mutex> lk(error_mutex);
    if (first_error.empty()) first_error = what;
}

// A reusable barrier whose participants can leave (arrive_and_drop), with a deadlock timeout.
// arrive_and_wait returns whether every thread the barrier started with was still there
// (none had left) when this phase completed.
class Barrier {
  public:
    explicit Barrier(int n) : initial_(n), expected_(n), count_(n) {}

    bool arrive_and_wait(const char* what) {
        std::unique_lock<std::mutex> lk(m_);
        const unsigned long phase = phase_;
        if (--count_ == 0) { next_phase(); return full_; }
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
        while (phase_ == phase && !aborted) {
            cv_.wait_for(lk, std::chrono::milliseconds(50));
            if (phase_ == phase && std::chrono::steady_clock::now() > deadline) {
                fail(std::string("deadlock: a ") + what + " was not reached by every thread");
                aborted = true;
            }
        }
        return full_;      // the next phase cannot complete before this thread arrives again
    }

    void arrive_and_drop() {
        std::lock_guard<std::mutex> lk(m_);
        --expected_;
        if (--count_ == 0) next_phase();
    }

  private:
    void next_phase() { full_ = expected_ == initial_; ++phase_; count_ = expected_; cv_.notify_all(); }
    std::mutex m_;
    std::condition_variable cv_;
    const int initial_;
    int expected_, count_;
    bool full_ = true;
    unsigned long phase_ = 0;
};

struct Warp {
    Barrier barrier{32};
    double slots[32];                // float and double values both round-trip exactly
};

struct Block {
    explicit Block(int threads) : barrier(threads), warps(threads / 32) {
        for (auto& w : warps) w.reset(new Warp());
    }
    Barrier barrier;
    std::vector<std::unique_ptr<Warp>> warps;
};

thread_local Block* block;
thread_local int lane, warp_id;

inline void syncthreads() {
    if (!block->barrier.arrive_and_wait("__syncthreads"))
        fail("__syncthreads reached after a thread of the block had returned");
}

template <class V>
V shfl_xor_sync(unsigned mask, V v, int lane_mask) {
    if (mask != 0xffffffffu) fail("__shfl_xor_sync with a partial mask is not emulated");
    Warp& w = *block->warps[warp_id];
    w.slots[lane] = static_cast<double>(v);
    if (!w.barrier.arrive_and_wait("__shfl_xor_sync"))
        fail("full-mask __shfl_xor_sync after a lane of the warp had returned");
    const V r = static_cast<V>(w.slots[lane ^ lane_mask]);
    w.barrier.arrive_and_wait("__shfl_xor_sync");
    return r;
}

// Run kernel() for every thread of a grid (gx, gy) x block (bx, by): blocks one at a time.
template <class F>
void launch(unsigned gx, unsigned gy, unsigned bx, unsigned by, F kernel) {
    grid_dim = {gx, gy, 1};
    block_dim = {bx, by, 1};
    const int n = static_cast<int>(bx * by);
    if (n % 32 != 0 || n > 1024) { fail("block size must be a multiple of 32, at most 1024"); return; }
    for (unsigned y = 0; y < gy && !aborted; ++y) {
        for (unsigned x = 0; x < gx && !aborted; ++x) {
            Block b(n);
            std::vector<std::thread> threads;
            threads.reserve(n);
            for (int t = 0; t < n; ++t) {
                threads.emplace_back([&b, &kernel, t, x, y, bx, by] {
                    thread_idx = {t % bx, t / bx, 0};
                    block_idx = {x, y, 0};
                    block = &b;
                    lane = t % 32;
                    warp_id = t / 32;
                    kernel();
                    b.barrier.arrive_and_drop();           // returned: leave every barrier
                    b.warps[warp_id]->barrier.arrive_and_drop();
                });
            }
            for (auto& th : threads) th.join();
        }
    }
}

}  // namespace emu

extern "C" const char* emu_error() { return emu::first_error.c_str(); }
extern "C" void emu_reset(double timeout_s) {
    emu::first_error.clear();
    emu::aborted = false;
    emu::timeout_s = timeout_s;
}

// The CUDA names the kernels use.
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static        // blocks run one at a time: one copy serves the running block
// __restrict__ is a g++ keyword already.
#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define __syncthreads() emu::syncthreads()
#define __shfl_xor_sync(mask, v, lane_mask) emu::shfl_xor_sync((mask), (v), (lane_mask))

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
// CUDA's math functions are overloaded for float and double, as std::'s are.
using std::exp;
using std::fmax;
using std::log;
using std::sqrt;
