// Matrix products straight from weights as a checkpoint stores them (GGUF's blocks, bf16), for decoding on the CPU.
//
// Decoding one token reads every weight once, so its speed is set by how many bytes the weights take. The embedded
// model's weights are stored as Q4_1 (and Q8_0 for the embedding): 5 and 8.5 bits per weight instead of float32's
// 32. These kernels read those blocks as stored and compute in float32 with the exact weight values a float32
// dequantization gives (d * q + m, or d * q); only the order of the float additions differs from a dense matmul.
//
// Layouts (rows = output features, K = input features, a block = 32 consecutive inputs of one row):
//   Q4_1: q [N, K/2] uint8, block b's 16 bytes hold element j in the low nibble and j + 16 in the high nibble;
//         d, m [N, K/32] float32; weight = d * q + m.
//   Q8_0: q [N, K] int8; d [N, K/32] float32; weight = d * q.
// y[r, n] = sum_b d[n, b] * (q[n, b, :] . x[r, b, :])  (+ m[n, b] * sum(x[r, b, :]) for Q4_1)
//
// A checkpoint stored in bf16 (the hub's safetensors) is read the same way: its values as stored, 2 bytes each, each
// widened to the float32 it exactly is (the upper half of its bits) in registers, products summed in float32.
//   BF16: w [N, K] int16 holding bfloat16 bits; y[r, n] = w[n, :] . x[r, :].
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <cmath>
#include <cstring>
#include <optional>
#include <type_traits>
#include <cstdint>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define EXPLORER_X86 1
#endif

namespace {

constexpr int64_t BLOCK = 32;

float q4_1_dot_scalar(const uint8_t* q, const float* d, const float* m, const float* x, const float* xsum,
                      int64_t nb) {
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    float t = 0.f;
    for (int j = 0; j < 16; ++j) {
      t += float(q[b * 16 + j] & 0x0F) * x[b * BLOCK + j];
      t += float(q[b * 16 + j] >> 4) * x[b * BLOCK + 16 + j];
    }
    acc += d[b] * t + m[b] * xsum[b];
  }
  return acc;
}

float q8_0_dot_scalar(const int8_t* q, const float* d, const float* x, int64_t nb) {
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    float t = 0.f;
    for (int j = 0; j < BLOCK; ++j) t += float(q[b * BLOCK + j]) * x[b * BLOCK + j];
    acc += d[b] * t;
  }
  return acc;
}

// bfloat16 bits -> the float32 they are the upper half of (exact)
inline float bf16_value(uint16_t bits) {
  const uint32_t wide = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof f);
  return f;
}

float bf16_dot_scalar(const uint16_t* w, const float* x, int64_t k) {
  float acc = 0.f;
  for (int64_t i = 0; i < k; ++i) acc += bf16_value(w[i]) * x[i];
  return acc;
}

#ifdef EXPLORER_X86
#define AVX512 __attribute__((target("avx512f,avx512bw")))
// 16 bf16 values widened to float32: zero-extend to 32 bits, shift into the upper half
AVX512 inline __m512 bf16x16_avx512(const uint16_t* w) {
  __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

AVX512 float bf16_dot_avx512(const uint16_t* w, const float* x, int64_t k) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {  // two chains, as for the blocks
    acc0 = _mm512_fmadd_ps(bf16x16_avx512(w + i), _mm512_loadu_ps(x + i), acc0);
    acc1 = _mm512_fmadd_ps(bf16x16_avx512(w + i + 16), _mm512_loadu_ps(x + i + 16), acc1);
  }
  float tail = 0.f;
  for (; i < k; ++i) tail += bf16_value(w[i]) * x[i];
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + tail;
}

// A row of x against one weight row, and TILE rows at once (a batched decoding step reads each weight once, not once
// a row): each block's 32 weights are made once as float32 vectors and used for every row, and every row's sum is the
// same operations in the same order whatever the tile (the one-row functions are the tile of one), so a row's result
// is the same bits whatever rows it shares a product with. Rows go in tiles of 8, then of 4 (products), then one by
// one: the wider the tile, the fewer times each block is made (8 rows: 16 accumulators, the weights and their
// lookup table fit AVX-512's 32 registers).
// Each weight is its float32 value as the dequantisation computes it (PackedWeight.dequantize: d * q + m for Q4_1,
// d * q for Q8_0, each operation rounded), and each row's sum is one fused multiply-add a weight: an 8-row tile takes
// 16 a block plus the block's making, where scaling the integer sums by d afterwards took 24 (16 rows of a decoding
// step 47.5 -> 44 ms, one row 7.5 -> 6.8).

// a Q4_1 block's weights: elements 0..15 (lo) and 16..31 (hi), each quant looked up among the block's 16 values
AVX512 inline void q4_1_weights(const uint8_t* q, float d, float m, __m512& lo, __m512& hi) {
  const __m512 values = _mm512_add_round_ps(  // d * j + m, j = 0..15: the rounding intrinsics are never fused
      _mm512_mul_round_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_ps(d),
                          _MM_FROUND_CUR_DIRECTION),
      _mm512_set1_ps(m), _MM_FROUND_CUR_DIRECTION);
  const __m128i low = _mm_set1_epi8(0x0F);
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  lo = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_and_si128(raw, low)), values);
  hi = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(raw, 4), low)), values);
}

// a Q8_0 block's weights: elements 0..15 (a) and 16..31 (c)
AVX512 inline void q8_0_weights(const int8_t* q, float d, __m512& a, __m512& c) {
  const __m128i* p = reinterpret_cast<const __m128i*>(q);
  const __m512 scale = _mm512_set1_ps(d);
  a = _mm512_mul_round_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p))), scale,
                          _MM_FROUND_CUR_DIRECTION);
  c = _mm512_mul_round_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p + 1))), scale,
                          _MM_FROUND_CUR_DIRECTION);
}

// out[r] = the sum over the blocks of row r of x times the weights: two accumulators a row (the block's halves)
template <int ROWS, typename Weights>
AVX512 inline void block_dots(int64_t nb, const float* const* x, float* out, const Weights& weights) {
  __m512 acc0[ROWS], acc1[ROWS];
  for (int r = 0; r < ROWS; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m512 lo, hi;
    weights(b, lo, hi);
    for (int r = 0; r < ROWS; ++r) {
      const float* xb = x[r] + b * BLOCK;
      acc0[r] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xb), acc0[r]);
      acc1[r] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), acc1[r]);
    }
  }
  for (int r = 0; r < ROWS; ++r) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r]));
}

// the weights of block b of one weight row, as block_dots asks for them (structs, not lambdas: a lambda's code would
// not take AVX-512's target and could not be inlined)
struct Q4_1Row {
  const uint8_t* q;
  const float *d, *m;
  AVX512 void operator()(int64_t b, __m512& lo, __m512& hi) const { q4_1_weights(q + b * 16, d[b], m[b], lo, hi); }
};

struct Q8_0Row {
  const int8_t* q;
  const float* d;
  AVX512 void operator()(int64_t b, __m512& a, __m512& c) const { q8_0_weights(q + b * BLOCK, d[b], a, c); }
};

template <int ROWS>
AVX512 void q4_1_dots_avx512(const uint8_t* q, const float* d, const float* m, const float* const* x, int64_t nb,
                             float* out) {
  block_dots<ROWS>(nb, x, out, Q4_1Row{q, d, m});
}

template <int ROWS>
AVX512 void q8_0_dots_avx512(const int8_t* q, const float* d, const float* const* x, int64_t nb, float* out) {
  block_dots<ROWS>(nb, x, out, Q8_0Row{q, d});
}

template <int ROWS>
AVX512 void bf16_dots_avx512(const uint16_t* w, const float* const* x, int64_t k, float* out) {
  __m512 acc0[ROWS], acc1[ROWS];
  for (int r = 0; r < ROWS; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    const __m512 w0 = bf16x16_avx512(w + i), w1 = bf16x16_avx512(w + i + 16);
    for (int r = 0; r < ROWS; ++r) {
      acc0[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x[r] + i), acc0[r]);
      acc1[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x[r] + i + 16), acc1[r]);
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    float tail = 0.f;
    for (int64_t j = i; j < k; ++j) tail += bf16_value(w[j]) * x[r][j];
    out[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r])) + tail;
  }
}

#define AVX2 __attribute__((target("avx2,fma")))
AVX2 inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

AVX2 float q4_1_dot_avx2(const uint8_t* q, const float* d, const float* m,
                                                       const float* x, const float* xsum, int64_t nb) {
  const __m128i low = _mm_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps();
  float macc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + b * 16));
    __m128i lo = _mm_and_si128(raw, low), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
    const float* xb = x + b * BLOCK;
    __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), _mm256_loadu_ps(xb));
    t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), _mm256_loadu_ps(xb + 8), t);
    t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), _mm256_loadu_ps(xb + 16), t);
    t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), _mm256_loadu_ps(xb + 24), t);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d[b]), t, acc);
    macc += m[b] * xsum[b];
  }
  return hsum256(acc) + macc;
}

AVX2 float bf16_dot_avx2(const uint16_t* w, const float* x, int64_t k) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    __m256i lo = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i)));
    __m256i hi = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i + 8)));
    acc0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(lo, 16)), _mm256_loadu_ps(x + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(hi, 16)), _mm256_loadu_ps(x + i + 8), acc1);
  }
  float tail = 0.f;
  for (; i < k; ++i) tail += bf16_value(w[i]) * x[i];
  return hsum256(_mm256_add_ps(acc0, acc1)) + tail;
}

AVX2 float q8_0_dot_avx2(const int8_t* q, const float* d, const float* x, int64_t nb) {
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + b * BLOCK));
    __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + b * BLOCK + 16));
    const float* xb = x + b * BLOCK;
    __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a)), _mm256_loadu_ps(xb));
    t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a, 8))), _mm256_loadu_ps(xb + 8), t);
    t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), _mm256_loadu_ps(xb + 16), t);
    t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(c, 8))), _mm256_loadu_ps(xb + 24), t);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d[b]), t, acc);
  }
  return hsum256(acc);
}
#endif

enum class Isa { scalar, avx2, avx512 };

Isa detect() {
#ifdef EXPLORER_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::scalar;
}

const Isa BEST = detect();
Isa ISA = BEST;  // tests step down to check every path on one machine (use_isa)

void check(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& d, int64_t q_cols) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.is_contiguous(),
              "x must be a contiguous float32 [M, K] CPU tensor");
  const int64_t n = q.size(0), k = x.size(1);
  TORCH_CHECK(k % BLOCK == 0, "K must be a multiple of 32");
  TORCH_CHECK(q.dim() == 2 && q.is_contiguous() && q.size(1) == q_cols, "packed weights have the wrong shape");
  TORCH_CHECK(d.scalar_type() == torch::kFloat32 && d.is_contiguous() && d.dim() == 2 && d.size(0) == n &&
                  d.size(1) == k / BLOCK,
              "scales must be contiguous float32 [N, K/32]");
}

// rows of the weight per chunk (split): enough work to outweigh a chunk's claim and a helper's copy, small enough to
// split a 576-row matrix evenly; a decoding step of one row took 6.2-6.6 ms with 32, 5.6 with 64, 6.0 with 128
constexpr int64_t GRAIN = 64;
// Each call streams a few hundred KB that the hardware prefetcher picks up late: asking for the row PREFETCH_ROWS
// ahead keeps the memory bus busy (bench.core measures it).
constexpr int64_t PREFETCH_ROWS = 12;

// As inline assembly: GCC dropped _mm_prefetch's builtin from the Q4_1 and Q8_0 products once they went through
// products() (none left in the compiled loop; a one-row step 7.4 -> 10 ms), and a volatile asm is never dropped.
inline void prefetch(const void* p, int64_t bytes) {
#ifdef EXPLORER_X86
  for (int64_t off = 0; off < bytes; off += 64)
    asm volatile("prefetcht0 %0" : : "m"(*(static_cast<const char*>(p) + off)));
#endif
}

// The products of the rows of x with weight rows [begin, end), into out (row r's result for weight row i at
// out[r * stride + i - begin]): tile(ROWS, i, r0, results) computes rows r0.. r0 + ROWS - 1 against weight row i
// (AVX-512: tiles of 8, then of 4), one(i, r) the rows left one by one; fetch(i) asks for what weight row i reads
// next. Weight rows go GRAIN at a time and, within those, the rows of x a tile at a time: the tile stays in L1 while
// the GRAIN weight rows pass (from memory the first time, then from L2). Weight row by weight row, every row of x was
// read again for each weight row: with many rows (a step's short prompts: 16 prompts of 9 tokens are 144 rows) that
// was bound by L2's bandwidth. Each (row, weight row) result is the same call as before, so the same bits.
template <typename Fetch, typename Tile, typename One>
inline void products(int64_t begin, int64_t end, int64_t rows, float* out, int64_t stride, Fetch fetch, Tile tile,
                     One one) {
  for (int64_t b0 = begin; b0 < end; b0 += GRAIN) {
    const int64_t b1 = std::min(end, b0 + GRAIN);
    bool first = true;  // the first pass over these weight rows reads them from memory: ask ahead for them
    int64_t r = 0;
#ifdef EXPLORER_X86
    if (ISA == Isa::avx512) {
      float results[8];
      auto pass = [&](auto size, int64_t r0) {
        for (int64_t i = b0; i < b1; ++i) {
          if (first) fetch(i);
          tile(size, i, r0, results);
          for (int t = 0; t < decltype(size)::value; ++t) out[(r0 + t) * stride + (i - begin)] = results[t];
        }
        first = false;
      };
      for (; r + 8 <= rows; r += 8) pass(std::integral_constant<int, 8>{}, r);
      for (; r + 4 <= rows; r += 4) pass(std::integral_constant<int, 4>{}, r);
    }
#endif
    for (; r < rows; ++r) {
      for (int64_t i = b0; i < b1; ++i) {
        if (first) fetch(i);
        out[r * stride + (i - begin)] = one(i, r);
      }
      first = false;
    }
  }
}

// ---- Work split between the calling thread and helpers that it never waits for ----
//
// A decoding step is ~120 short parallel loops. With OpenMP each ended at a barrier where the caller waits for every
// thread of its team; on a machine whose cores also run a web server and renders, the OS often has one of them off
// its core for milliseconds, and a step beside a busy process fell from 124 to 3 tokens/s (bench.contention). Here a
// loop's items go out in chunks that the caller and the helpers take in turn; a helper computes its chunk into its
// own scratch and stores it only if the caller has not taken the chunk over meanwhile. The caller, out of chunks,
// waits for a helper's chunk about as long as one chunk takes, then computes it itself: a helper that the OS took off
// its core costs a loop one chunk, never the rest of the helper's sleep. Each chunk is computed by the same serial
// code whoever takes it, so the numbers are the same with any number of helpers, awake or not.

// A chunk's state: taken by nobody yet, by the caller (who writes into the output directly), by a helper (who
// computes into its scratch), a helper storing its scratch, or done.
enum : int { FREE, CALLER, HELPER, STORING, DONE };

// one cache line each, so that threads claiming neighbouring chunks do not pass a line back and forth (on this 2-core
// machine it measured the same as packed states: each thread claims its own run, and they meet once)
struct alignas(64) State : std::atomic<int> {
  State() : std::atomic<int>(FREE) {}
};

// A loop over items: item i's output is `rows` runs of `width` floats, the r-th at y[r * stride + i * width].
// compute(b, e, out, out_stride) writes items [b, e): item i's r-th run at out[r * out_stride + (i - b) * width].
// keep holds every tensor compute reads or writes: a helper that the OS took off its core mid-chunk may still read
// them after the caller has returned, until it finds that its chunk was taken over.
struct Loop {
  int64_t items, per_chunk, chunks, rows, width, stride;
  float* y;
  int helpers;
  std::function<void(int64_t, int64_t, float*, int64_t)> compute;
  std::vector<torch::Tensor> keep;
  std::unique_ptr<State[]> state;
  alignas(64) std::atomic<int64_t> stored{0};  // chunks the helpers have stored

  // Thread t's part (0: the caller, h + 1: helper h): equal runs of chunks, one after the other.
  int64_t part(int t) const { return t * chunks / (helpers + 1); }

  // Takes chunks for thread t (as `who`) and runs each with work(c): its own part upwards until a chunk is taken
  // (others take a part from its end), then the rest of each other part from its end downwards, until a chunk is
  // taken. Each thread streams through runs of consecutive rows, and touches another's chunks only where they meet.
  template <typename Work>
  void take(int t, int who, Work work) {
    for (int64_t c = part(t); c < part(t + 1) && claim(c, who); ++c) work(c);
    for (int u = 1; u <= helpers; ++u) {
      const int other = (t + u) % (helpers + 1);
      for (int64_t c = part(other + 1) - 1; c >= part(other) && claim(c, who); --c) work(c);
    }
  }

  bool claim(int64_t c, int who) {
    int expected = FREE;
    return state[c].load(std::memory_order_relaxed) == FREE && state[c].compare_exchange_strong(expected, who);
  }
};

// how long a helper spins for the next loop, then yields its core to any other thread that wants it, before it sleeps
// until woken: a step's loops follow each other within microseconds, steps within milliseconds (the Python between
// them); a helper woken from sleep joins a loop late (one sequence: 106 tok/s sleeping after 200 us, 114 yielding
// until 3 ms), and one spinning longer takes a core from a render's thread and so the GIL from the model thread
constexpr auto SPIN = std::chrono::microseconds(200), YIELD = std::chrono::microseconds(3000);

// For tests: while set, each helper stops right after taking a chunk, as one the OS took off its core would, and the
// caller lets the helpers take one before it starts on its own.
std::atomic<bool> STALL{false};

class Helpers {
 public:
  explicit Helpers(int count) : pid_(getpid()) {
    for (int h = 0; h < count; ++h) std::thread([this, h] { serve(h); }).detach();
    count_ = count;
  }

  int count() const { return count_; }
  int inside() const { return inside_; }  // helpers inside a loop now (one that the caller may have finished)
  bool forked() const { return getpid() != pid_; }

  // Runs the loop with up to loop.helpers helpers; returns once every chunk is stored.
  void run(const std::shared_ptr<Loop>& loop) {
    std::unique_lock<std::mutex> turn(busy_, std::try_to_lock);
    if (!turn.owns_lock()) {  // another thread's loop holds the helpers: alone
      loop->compute(0, loop->items, loop->y, loop->stride);
      return;
    }
    std::atomic_store(&current_, loop);
    seq_.fetch_add(1);
    if (sleeping_) {  // a helper that counted itself asleep holds the mutex until it waits
      std::lock_guard<std::mutex> lock(mutex_);
      asleep_.notify_all();
    }
    while (STALL && stalled_ < loop->helpers) std::this_thread::sleep_for(std::chrono::microseconds(100));
    Loop& l = *loop;
    int64_t own = 0;
    const auto start = std::chrono::steady_clock::now();
    auto direct = [&](int64_t c) {
      const int64_t b = c * l.per_chunk, e = std::min(l.items, b + l.per_chunk);
      l.compute(b, e, l.y + b * l.width, l.stride);
      l.state[c].store(DONE, std::memory_order_release);
      ++own;
    };
    l.take(0, CALLER, direct);
    // the helpers' chunks: wait about as long as one of its own chunks took, then compute those not yet stored
    const auto patience = (std::chrono::steady_clock::now() - start) / std::max<int64_t>(own, 1) * 2 +
                          std::chrono::microseconds(2);
    for (auto since = std::chrono::steady_clock::now(); own + l.stored.load(std::memory_order_acquire) < l.chunks;) {
      if (std::chrono::steady_clock::now() - since < patience) {
        pause();
        continue;
      }
      for (int64_t c = 0; c < l.chunks; ++c) {
        int s = l.state[c].load(std::memory_order_acquire);
        if ((s == FREE || s == HELPER) && l.state[c].compare_exchange_strong(s, CALLER)) direct(c);
      }
      since = std::chrono::steady_clock::now();
    }
    std::atomic_store(&current_, std::shared_ptr<Loop>());  // a helper still inside it holds its own reference
  }

 private:
  static void pause() {
#ifdef EXPLORER_X86
    _mm_pause();
#endif
  }

  void serve(int h) {
    pthread_setname_np(pthread_self(), "kernel-helper");
    uint64_t seen = 0;
    std::vector<float> scratch;
    for (;;) {
      const auto since = std::chrono::steady_clock::now();
      for (int spins = 1; seq_.load(std::memory_order_acquire) == seen; ++spins) {
        if (spins < 256) {
          pause();
          continue;
        }
        const auto waited = std::chrono::steady_clock::now() - since;
        if (waited < SPIN) {
          pause();
        } else if (waited < YIELD) {
          std::this_thread::yield();
        } else {
          std::unique_lock<std::mutex> lock(mutex_);
          ++sleeping_;
          asleep_.wait(lock, [&] { return seq_ != seen; });
          --sleeping_;
        }
      }
      seen = seq_;
      std::shared_ptr<Loop> loop = std::atomic_load(&current_);
      if (!loop || h >= loop->helpers) continue;
      ++inside_;
      Loop& l = *loop;
      l.take(h + 1, HELPER, [&](int64_t c) {
        if (STALL) {
          ++stalled_;
          while (STALL) std::this_thread::sleep_for(std::chrono::microseconds(100));
          --stalled_;
        }
        const int64_t b = c * l.per_chunk, e = std::min(l.items, b + l.per_chunk), run = (e - b) * l.width;
        scratch.resize(l.rows * run);
        l.compute(b, e, scratch.data(), run);
        int expected = HELPER;
        if (!l.state[c].compare_exchange_strong(expected, STORING)) return;  // the caller took it over
        for (int64_t r = 0; r < l.rows; ++r)
          std::memcpy(l.y + r * l.stride + b * l.width, scratch.data() + r * run, run * sizeof(float));
        l.state[c].store(DONE, std::memory_order_release);
        l.stored.fetch_add(1, std::memory_order_release);
      });
      loop.reset();
      --inside_;
    }
  }

  int count_ = 0;
  pid_t pid_;
  std::mutex busy_, mutex_;
  std::condition_variable asleep_;
  std::shared_ptr<Loop> current_;
  std::atomic<uint64_t> seq_{0};
  std::atomic<int> stalled_{0}, inside_{0}, sleeping_{0};
};

std::atomic<int> HELPERS{0};  // helpers a loop may use (use_helpers; the module sets one for each other core)

// The helpers, started on first use (again in a forked child, which has none of its parent's threads); never
// destroyed: its threads live as long as the process.
Helpers* pool(int want) {
  static std::mutex creating;
  static Helpers* helpers = nullptr;
  std::lock_guard<std::mutex> lock(creating);
  if (!helpers || helpers->forked() || helpers->count() < want)
    helpers = new Helpers(std::max(want, int(std::thread::hardware_concurrency()) - 1));
  return helpers;
}

// items [0, n) of a loop whose output is y (see Loop) in chunks of per_chunk, between the calling thread and up to
// HELPERS helpers; compute must only read and write what keep holds. A loop of one chunk, or with no helpers, runs
// here and now, with nothing allocated.
template <typename Compute>
void split(int64_t n, int64_t per_chunk, float* y, int64_t rows, int64_t width, int64_t stride,
           std::vector<torch::Tensor> keep, Compute compute) {
  const int want = HELPERS;
  per_chunk = std::max<int64_t>(1, per_chunk);
  const int64_t chunks = (n + per_chunk - 1) / per_chunk;
  if (want == 0 || chunks < 2) {
    compute(0, n, y, stride);
    return;
  }
  auto loop = std::make_shared<Loop>();
  loop->items = n, loop->per_chunk = per_chunk, loop->chunks = chunks;
  loop->rows = rows, loop->width = width, loop->stride = stride, loop->y = y;
  loop->helpers = want;
  loop->compute = std::move(compute);
  loop->keep = std::move(keep);
  loop->state.reset(new State[chunks]);
  pool(want)->run(loop);
}

}  // namespace

torch::Tensor q4_1_matmul(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& d,
                          const torch::Tensor& m) {
  TORCH_CHECK(q.scalar_type() == torch::kUInt8, "Q4_1 weights must be uint8");
  check(x, q, d, x.size(1) / 2);
  TORCH_CHECK(m.sizes() == d.sizes() && m.scalar_type() == torch::kFloat32 && m.is_contiguous(), "bad minimums");
  const int64_t rows = x.size(0), k = x.size(1), n = q.size(0), nb = k / BLOCK;
  auto y = torch::empty({rows, n}, x.options());
  const float *px = x.data_ptr<float>(), *pd = d.data_ptr<float>(), *pm = m.data_ptr<float>();
  // sum of x over each block, for the minimums' part of the AVX2 and scalar sums (AVX-512 looks whole weights up)
  torch::Tensor xsum;
  std::vector<const float*> xs(rows), ss(rows);
  if (ISA != Isa::avx512) {
    xsum = torch::empty({rows, nb}, x.options());
    float* ps = xsum.data_ptr<float>();
    for (int64_t i = 0; i < rows * nb; ++i) {
      float t = 0.f;
      for (int64_t j = 0; j < BLOCK; ++j) t += px[i * BLOCK + j];
      ps[i] = t;
    }
    for (int64_t r = 0; r < rows; ++r) ss[r] = ps + r * nb;
  }
  const uint8_t* pq = q.data_ptr<uint8_t>();
  float* py = y.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) xs[r] = px + r * k;
  split(n, GRAIN, py, rows, 1, n, {x, q, d, m, y, xsum}, [=](int64_t begin, int64_t end, float* out, int64_t stride) {
    products(
        begin, end, rows, out, stride,
        [&](int64_t i) {
          prefetch(pq + (i + PREFETCH_ROWS) * (k / 2), k / 2);
          prefetch(pd + (i + PREFETCH_ROWS) * nb, nb * 4);
          prefetch(pm + (i + PREFETCH_ROWS) * nb, nb * 4);
        },
        [&](auto tile, int64_t i, int64_t r0, float* results) {
#ifdef EXPLORER_X86
          q4_1_dots_avx512<decltype(tile)::value>(pq + i * (k / 2), pd + i * nb, pm + i * nb, &xs[r0], nb, results);
#endif
        },
        [&](int64_t i, int64_t r) {
          const uint8_t* qi = pq + i * (k / 2);
          const float *di = pd + i * nb, *mi = pm + i * nb;
#ifdef EXPLORER_X86
          float v;
          if (ISA == Isa::avx512) return q4_1_dots_avx512<1>(qi, di, mi, &xs[r], nb, &v), v;
          if (ISA == Isa::avx2) return q4_1_dot_avx2(qi, di, mi, xs[r], ss[r], nb);
#endif
          return q4_1_dot_scalar(qi, di, mi, xs[r], ss[r], nb);
        });
  });
  return y;
}

torch::Tensor q8_0_matmul(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& d) {
  TORCH_CHECK(q.scalar_type() == torch::kInt8, "Q8_0 weights must be int8");
  check(x, q, d, x.size(1));
  const int64_t rows = x.size(0), k = x.size(1), n = q.size(0), nb = k / BLOCK;
  auto y = torch::empty({rows, n}, x.options());
  const float *px = x.data_ptr<float>(), *pd = d.data_ptr<float>();
  const int8_t* pq = q.data_ptr<int8_t>();
  float* py = y.data_ptr<float>();
  std::vector<const float*> xs(rows);
  for (int64_t r = 0; r < rows; ++r) xs[r] = px + r * k;
  split(n, GRAIN, py, rows, 1, n, {x, q, d, y}, [=](int64_t begin, int64_t end, float* out, int64_t stride) {
    products(
        begin, end, rows, out, stride,
        [&](int64_t i) {
          prefetch(pq + (i + PREFETCH_ROWS) * k, k);
          prefetch(pd + (i + PREFETCH_ROWS) * nb, nb * 4);
        },
        [&](auto tile, int64_t i, int64_t r0, float* results) {
#ifdef EXPLORER_X86
          q8_0_dots_avx512<decltype(tile)::value>(pq + i * k, pd + i * nb, &xs[r0], nb, results);
#endif
        },
        [&](int64_t i, int64_t r) {
          const int8_t* qi = pq + i * k;
          const float* di = pd + i * nb;
#ifdef EXPLORER_X86
          float v;
          if (ISA == Isa::avx512) return q8_0_dots_avx512<1>(qi, di, &xs[r], nb, &v), v;
          if (ISA == Isa::avx2) return q8_0_dot_avx2(qi, di, xs[r], nb);
#endif
          return q8_0_dot_scalar(qi, di, xs[r], nb);
        });
  });
  return y;
}

torch::Tensor bf16_matmul(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.is_contiguous(),
              "x must be a contiguous float32 [M, K] CPU tensor");
  TORCH_CHECK(w.scalar_type() == torch::kInt16 && w.dim() == 2 && w.is_contiguous() && w.size(1) == x.size(1),
              "bf16 weights must be contiguous int16 [N, K] (bfloat16 bits)");
  const int64_t rows = x.size(0), k = x.size(1), n = w.size(0);
  auto y = torch::empty({rows, n}, x.options());
  const float* px = x.data_ptr<float>();
  const uint16_t* pw = reinterpret_cast<const uint16_t*>(w.data_ptr<int16_t>());
  float* py = y.data_ptr<float>();
  std::vector<const float*> xs(rows);
  for (int64_t r = 0; r < rows; ++r) xs[r] = px + r * k;
  split(n, GRAIN, py, rows, 1, n, {x, w, y}, [=](int64_t begin, int64_t end, float* out, int64_t stride) {
    products(
        begin, end, rows, out, stride, [&](int64_t i) { prefetch(pw + (i + PREFETCH_ROWS) * k, k * 2); },
        [&](auto tile, int64_t i, int64_t r0, float* results) {
#ifdef EXPLORER_X86
          bf16_dots_avx512<decltype(tile)::value>(pw + i * k, &xs[r0], k, results);
#endif
        },
        [&](int64_t i, int64_t r) {
          const uint16_t* wi = pw + i * k;
#ifdef EXPLORER_X86
          if (ISA == Isa::avx512) return bf16_dot_avx512(wi, xs[r], k);
          if (ISA == Isa::avx2) return bf16_dot_avx2(wi, xs[r], k);
#endif
          return bf16_dot_scalar(wi, xs[r], k);
        });
  });
  return y;
}

// RMSNorm of a few float32 rows: x / sqrt(mean(x^2) + eps) * weight.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "x: contiguous float32");
  const int64_t d = x.size(-1), rows = x.numel() / d;
  TORCH_CHECK(w.scalar_type() == torch::kFloat32 && w.is_contiguous() && w.numel() == d, "weight: float32 [d]");
  auto y = torch::empty_like(x);
  const float *px = x.data_ptr<float>(), *pw = w.data_ptr<float>();
  float* py = y.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = px + r * d;
    float ss = 0.f;
    for (int64_t i = 0; i < d; ++i) ss += xr[i] * xr[i];
    const float scale = 1.f / std::sqrt(ss / float(d) + float(eps));
    for (int64_t i = 0; i < d; ++i) py[r * d + i] = pw[i] * (xr[i] * scale);
  }
  return y;
}

// One head's rotate-half RoPE at one position: out = x * cos + rotate_half(x) * sin, d = 2 * half values.
// One query's attention over n keys and values (each hd floats, one after the other): softmax(q . k * scale)
// weighting the values, into out [hd]; p [n] is scratch. The same serial code for a query whatever else runs, so a
// row's numbers do not depend on its companions. With AVX-512 (hd a multiple of 16) the products over hd are vector
// operations; a serial chain of scalar additions (what a compiler must keep without -ffast-math) waits on each one,
// which made a step at 900 tokens three times as long as at 30.
inline void attend_scalar(const float* q, const float* keys, const float* values, int64_t n, int64_t hd, float scale,
                          float* p, float* out) {
  float top = -INFINITY, total = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    float dot = 0.f;
    for (int64_t i = 0; i < hd; ++i) dot += q[i] * keys[j * hd + i];
    p[j] = dot * scale;
    top = std::max(top, p[j]);
  }
  for (int64_t j = 0; j < n; ++j) total += (p[j] = std::exp(p[j] - top));
  std::fill(out, out + hd, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    const float w = p[j] / total;
    for (int64_t i = 0; i < hd; ++i) out[i] += w * values[j * hd + i];
  }
}

#ifdef EXPLORER_X86
constexpr int64_t MAX_HEAD_VECTORS = 16;  // head dimensions up to 256 in registers-worth of accumulators

// e^x for 16 floats (x <= 88), within about an ulp of std::exp (Cephes' expf): x = n ln 2 + r with |r| <= ln 2 / 2,
// e^r by its degree-7 polynomial, times 2^n (scalef handles what underflows)
AVX512 inline __m512 exp_avx512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));  // below this e^x is 0 in float32
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(y, n);
}

AVX512 void attend_avx512(const float* q, const float* keys, const float* values, int64_t n, int64_t hd,
                          float scale, float* p, float* out) {
  const int64_t vectors = hd / 16;
  float top = -INFINITY, total = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    const float* k = keys + j * hd;
    __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(k));
    for (int64_t v = 1; v < vectors; ++v) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * v), _mm512_loadu_ps(k + 16 * v), acc);
    p[j] = _mm512_reduce_add_ps(acc) * scale;
    top = std::max(top, p[j]);
  }
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) _mm512_storeu_ps(p + j, exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(p + j), _mm512_set1_ps(top))));
  for (; j < n; ++j) p[j] = std::exp(p[j] - top);
  for (j = 0; j < n; ++j) total += p[j];
  __m512 sum[MAX_HEAD_VECTORS];
  for (int64_t v = 0; v < vectors; ++v) sum[v] = _mm512_setzero_ps();
  for (j = 0; j < n; ++j) {
    const __m512 w = _mm512_set1_ps(p[j] / total);
    for (int64_t v = 0; v < vectors; ++v) sum[v] = _mm512_fmadd_ps(w, _mm512_loadu_ps(values + j * hd + 16 * v), sum[v]);
  }
  for (int64_t v = 0; v < vectors; ++v) _mm512_storeu_ps(out + 16 * v, sum[v]);
}
#endif

inline void attend(const float* q, const float* keys, const float* values, int64_t n, int64_t hd, float scale,
                   float* p, float* out) {
#ifdef EXPLORER_X86
  if (ISA == Isa::avx512 && hd % 16 == 0 && hd / 16 <= MAX_HEAD_VECTORS)
    return attend_avx512(q, keys, values, n, hd, scale, p, out);
#endif
  attend_scalar(q, keys, values, n, hd, scale, p, out);
}

#ifdef EXPLORER_X86
AVX512 void silu_times_avx512(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 live = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    const __m512 g = _mm512_maskz_loadu_ps(live, gate + i);
    const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), e));
    _mm512_mask_storeu_ps(out + i, live, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(live, up + i)));
  }
}
#endif

// silu(gate[i]) * up[i] for i < n, into out. AVX-512: 16 lanes at a time with e^x vectorised (exp_avx512), the last
// lanes masked, so each element is the same lane computation wherever a loop's chunk begins (with std::exp, 16 rows'
// activations took about a tenth of a decoding step)
inline void silu_times(const float* gate, const float* up, int64_t n, float* out) {
#ifdef EXPLORER_X86
  if (ISA == Isa::avx512) return silu_times_avx512(gate, up, n, out);
#endif
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
}

inline void rope_row(const float* x, const float* c, const float* s, int64_t half, float* out) {
  for (int64_t i = 0; i < half; ++i) {
    out[i] = x[i] * c[i] + (-x[i + half]) * s[i];
    out[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
  }
}

// A matrix kept as stored: GGUF blocks, kind "q4_1" (q, d, m) or "q8_0" (q, d; m undefined), or "bf16" (q; d and m
// undefined).
struct Packed {
  std::string kind;
  torch::Tensor q, d, m;
  torch::Tensor operator()(const torch::Tensor& x) const {
    return kind == "q4_1" ? q4_1_matmul(x, q, d, m) : kind == "q8_0" ? q8_0_matmul(x, q, d) : bf16_matmul(x, q);
  }
};

// One new token of each of several sequences (rows) through one pre-norm Llama-style block (RMSNorm, fused q/k/v,
// rotate-half RoPE, grouped-query attention over each row's own cache, SwiGLU): the same math as
// decoder.Block.forward for a single position, in one call: the reference spends as long dispatching its ~40 small ops
// as the matrix products take (model/fast/llama_block.py). The matrices are read once for all rows (the products take
// the rows together); every row's numbers are computed by the same code whatever its companions, so a sequence decodes
// bit for bit alike alone and in a batch. Row r's k and v are written into its caches [1, Hkv, capacity, D] at
// positions[r]; its attention reads positions 0..positions[r] of them. cos, sin: [rows, D], each row's angles.
torch::Tensor llama_block_rows(const torch::Tensor& h, const torch::Tensor& attn_norm, const torch::Tensor& mlp_norm,
                               double eps, const Packed& qkv, const Packed& wo, const Packed& gate_up,
                               const Packed& down, int64_t n_heads, int64_t n_kv_heads, const torch::Tensor& cos,
                               const torch::Tensor& sin, const std::vector<torch::Tensor>& k_caches,
                               const std::vector<torch::Tensor>& v_caches, const std::vector<int64_t>& positions,
                               double scale) {
  const int64_t d = h.size(-1), rows = h.numel() / d, hd = cos.size(-1), group = n_heads / n_kv_heads;
  TORCH_CHECK(h.is_contiguous() && h.scalar_type() == torch::kFloat32, "h: contiguous float32 [rows, 1, d]");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.numel() == rows * hd && sin.numel() == rows * hd,
              "cos, sin: contiguous [rows, D]");
  TORCH_CHECK(int64_t(k_caches.size()) == rows && int64_t(v_caches.size()) == rows &&
                  int64_t(positions.size()) == rows,
              "one pair of caches and one position per row");
  for (int64_t r = 0; r < rows; ++r) {
    const auto &k = k_caches[r], &v = v_caches[r];
    TORCH_CHECK(k.dim() == 4 && k.size(0) == 1 && k.size(1) == n_kv_heads && k.size(3) == hd && k.is_contiguous() &&
                    v.sizes() == k.sizes() && v.is_contiguous() && positions[r] >= 0 && positions[r] < k.size(2),
                "caches: contiguous [1, Hkv, capacity > position, D]");
  }
  auto x = h.view({rows, d});
  auto qkv_out = qkv(rms_norm(x, attn_norm, eps));  // [rows, (H + 2 Hkv) D]
  const int64_t width = qkv_out.size(1), half = hd / 2;
  TORCH_CHECK(width == (n_heads + 2 * n_kv_heads) * hd, "q/k/v rows do not match the heads");
  const float *pqkv = qkv_out.data_ptr<float>(), *pc = cos.data_ptr<float>(), *ps = sin.data_ptr<float>();
  int64_t keys_read = 0;
  for (int64_t r = 0; r < rows; ++r) {  // the new keys (rotated) and values into each row's cache
    const float *pk = pqkv + r * width + n_heads * hd, *pv = pk + n_kv_heads * hd;
    const int64_t cap = k_caches[r].size(2), pos = positions[r];
    float *kc = k_caches[r].data_ptr<float>(), *vc = v_caches[r].data_ptr<float>();
    for (int64_t g = 0; g < n_kv_heads; ++g) {
      rope_row(pk + g * hd, pc + r * hd, ps + r * hd, half, kc + (g * cap + pos) * hd);
      std::copy(pv + g * hd, pv + (g + 1) * hd, vc + (g * cap + pos) * hd);
    }
    keys_read += pos + 1;
  }
  auto attn = torch::empty({rows, n_heads * hd}, h.options());
  float* pa = attn.data_ptr<float>();
  // (row, head) tasks, each computed by the same serial code; split between threads only when there is enough work
  const int64_t tasks = rows * n_heads, grain = keys_read * n_heads < 16384 ? tasks : 1;
  std::vector<torch::Tensor> keep{qkv_out, cos, sin, attn};
  std::vector<const float*> keys(rows), values(rows);
  std::vector<int64_t> caps(rows);
  for (int64_t r = 0; r < rows; ++r) {
    keep.push_back(k_caches[r]), keep.push_back(v_caches[r]);
    keys[r] = k_caches[r].data_ptr<float>(), values[r] = v_caches[r].data_ptr<float>(), caps[r] = k_caches[r].size(2);
  }
  split(tasks, grain, pa, 1, hd, 0, std::move(keep), [=](int64_t begin, int64_t end, float* out, int64_t) {
    std::vector<float> qr(hd), p;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / n_heads, head = task % n_heads, n = positions[r] + 1, at = (head / group) * caps[r] * hd;
      p.resize(n);
      rope_row(pqkv + r * width + head * hd, pc + r * hd, ps + r * hd, half, qr.data());
      attend(qr.data(), keys[r] + at, values[r] + at, n, hd, float(scale), p.data(), out + (task - begin) * hd);
    }
  });
  auto mid = x + wo(attn);
  auto gu = gate_up(rms_norm(mid, mlp_norm, eps));  // [rows, 2 F]: gate then up, per row
  const int64_t f = gu.size(1) / 2;
  auto act = torch::empty({rows, f}, h.options());
  const float* pg = gu.data_ptr<float>();
  float* pact = act.data_ptr<float>();
  split(rows * f, 4096, pact, 1, 1, 0, {gu, act}, [=](int64_t begin, int64_t end, float* out, int64_t) {
    for (int64_t j = begin; j < end;) {  // silu(gate) * up, a row's run of elements at a time
      const int64_t col = j % f, n = std::min(end - j, f - col);
      const float* gate = pg + (j / f) * 2 * f + col;
      silu_times(gate, gate + f, n, out + (j - begin));
      j += n;
    }
  });
  return (mid + down(act)).view(h.sizes());
}

// A Llama-style block's weights and settings as llama_block_rows takes them (model/fast/llama_block.py builds one per
// block, once).
struct LlamaBlock {
  torch::Tensor attn_norm, mlp_norm;
  double eps;
  Packed qkv, wo, gate_up, down;
  int64_t n_heads, n_kv_heads;
  double scale;
};

// One new token of each row through every block in turn: llama_block_rows layer after layer, in one call. A step then
// gives up the GIL (and runs Python) once, not around each block's call: while other threads run Python, each time
// the model takes the GIL back it waits up to the interpreter's switch interval. k_caches[layer][row] as
// llama_block_rows takes them; residuals, when given ([layers, rows, d]), receives each block's output.
torch::Tensor llama_blocks_rows(torch::Tensor h, const std::vector<LlamaBlock>& blocks, const torch::Tensor& cos,
                                const torch::Tensor& sin, const std::vector<std::vector<torch::Tensor>>& k_caches,
                                const std::vector<std::vector<torch::Tensor>>& v_caches,
                                const std::vector<int64_t>& positions, const std::optional<torch::Tensor>& residuals) {
  const int64_t layers = blocks.size(), d = h.size(-1), rows = h.numel() / d;
  TORCH_CHECK(int64_t(k_caches.size()) == layers && int64_t(v_caches.size()) == layers, "caches for every block");
  TORCH_CHECK(!residuals || (residuals->dim() == 3 && residuals->size(0) == layers && residuals->size(1) == rows &&
                             residuals->size(2) == d && residuals->scalar_type() == torch::kFloat32),
              "residuals: float32 [layers, rows, d]");
  for (int64_t l = 0; l < layers; ++l) {
    const LlamaBlock& b = blocks[l];
    h = llama_block_rows(h, b.attn_norm, b.mlp_norm, b.eps, b.qkv, b.wo, b.gate_up, b.down, b.n_heads, b.n_kv_heads,
                         cos, sin, k_caches[l], v_caches[l], positions, b.scale);
    if (residuals) (*residuals)[l].copy_(h.view({rows, d}));
  }
  return h;
}

std::string isa() { return ISA == Isa::avx512 ? "avx512" : ISA == Isa::avx2 ? "avx2" : "scalar"; }

// Use a given instruction set ("avx512", "avx2", "scalar", or "best"), if this CPU has it; returns the one in use.
std::string use_isa(const std::string& name) {
  TORCH_CHECK(name == "avx512" || name == "avx2" || name == "scalar" || name == "best", "unknown instruction set ",
              name);
  Isa want = name == "avx512" ? Isa::avx512 : name == "avx2" ? Isa::avx2 : name == "scalar" ? Isa::scalar : BEST;
  TORCH_CHECK(int(want) <= int(BEST), "this CPU does not support ", name);
  ISA = want;
  return isa();
}


// ---- A decoding step's sampling, in one call ----
//
// model/sampling.py's _sample_rows, the same ATen operations in the same order (so the same bits), in one call that
// gives up the GIL once: from Python each of its ~60 small operations took the GIL back after it, and beside a render
// drawing on another thread each of those waits cost a step's sampling 1 -> 14 ms (a thread running Python) or 300 ms
// (one in long C calls such as JSON encoding). Read the Python for what each line means.

torch::Tensor row_sums(const torch::Tensor& x, int64_t chunk = 1024) {
  const int64_t pad = (chunk - x.size(1) % chunk) % chunk;
  const torch::Tensor y = pad ? at::constant_pad_nd(x, {0, pad}) : x;
  return y.view({y.size(0), -1, chunk}).sum(-1).sum(-1);
}

torch::Tensor row_logsumexp(const torch::Tensor& x) {
  const torch::Tensor top = std::get<0>(x.max(-1, true));
  return top.select(1, 0) + at::log(row_sums(at::exp(x - top)));
}

torch::Tensor floats(const std::vector<double>& values) {
  std::vector<float> f(values.begin(), values.end());
  return torch::tensor(f);
}

torch::Tensor draw(const std::optional<torch::Tensor>& ids, const torch::Tensor& final, const torch::Tensor& kept,
                   const std::vector<std::optional<at::Generator>>& generators) {
  std::optional<torch::Tensor> order;
  if (ids) order = at::argsort(*ids, int64_t(-1), false);
  auto in_order = [&](const torch::Tensor& t) { return order ? t.gather(1, *order) : t; };
  const torch::Tensor cdf = at::cumsum(in_order(final), -1);
  std::vector<torch::Tensor> draws;
  for (const auto& g : generators) draws.push_back(at::rand({}, g, torch::kFloat32));
  const torch::Tensor u = at::stack(draws) * cdf.select(1, cdf.size(1) - 1);
  torch::Tensor at = at::searchsorted(cdf, u.unsqueeze(1), false, true).select(1, 0);
  const torch::Tensor flags = in_order(kept).flip(-1).to(torch::kUInt8);
  const torch::Tensor last = kept.size(1) - 1 - at::argmax(flags, -1);
  at = at::minimum(at, last);
  return order ? order->gather(1, at.unsqueeze(1)).select(1, 0) : at;
}

std::tuple<torch::Tensor, torch::Tensor> cuts(const torch::Tensor& scaled, const torch::Tensor& logits,
                                              const torch::Tensor& temperature, const std::vector<int64_t>& top_k,
                                              const std::vector<double>& top_p) {
  torch::Tensor keep = at::ones_like(scaled, torch::kBool);
  std::vector<double> p(top_p);
  for (auto& v : p) v = v < 1.0 ? v : INFINITY;
  const torch::Tensor top_p_ = floats(p);
  torch::Tensor short_rows = torch::empty({0}, torch::kLong);
  if (at::isfinite(top_p_).any().item<bool>()) {
    const torch::Tensor with_k = torch::tensor(std::vector<int64_t>(top_k.begin(), top_k.end())).ne(0);
    torch::Tensor log_total = row_logsumexp(scaled);
    const torch::Tensor without_k = (~with_k).nonzero().flatten();
    if (without_k.size(0))
      log_total.index_put_({without_k},
                           row_logsumexp(logits.index({without_k}) / temperature.index({without_k})));
    const torch::Tensor sorted_probs = at::exp(scaled - log_total.unsqueeze(1));
    short_rows = ((~with_k) & (row_sums(sorted_probs) < top_p_)).nonzero().flatten();
    const torch::Tensor mass_before = at::cumsum(sorted_probs, -1) - sorted_probs;
    keep &= mass_before < top_p_.unsqueeze(1);
  }
  keep.select(1, 0).fill_(true);
  return {keep, short_rows};
}

std::vector<torch::Tensor> sample_rows(const torch::Tensor& logits, const std::vector<double>& temperatures,
                                       const std::vector<int64_t>& top_k, const std::vector<double>& top_p,
                                       const std::vector<std::optional<at::Generator>>& generators, int64_t looks,
                                       int64_t n) {
  TORCH_CHECK(logits.scalar_type() == torch::kFloat32 && logits.dim() == 2, "logits: float32 [G, vocab]");
  const int64_t g = logits.size(0), vocab = logits.size(1);
  const torch::Tensor probs = at::softmax(logits, -1);
  const torch::Tensor entropy = -row_sums(probs * at::log_softmax(logits, -1));
  const torch::Tensor temperature = floats(temperatures).unsqueeze(1);
  torch::Tensor ids, final, kept, chosen, top, top_final, top_kept;
  torch::Tensor short_rows = torch::empty({0}, torch::kLong);
  if (looks == 1) {
    ids = at::argmax(logits, -1, true);
    kept = at::ones_like(ids, torch::kBool);
    final = kept.to(torch::kFloat32);
    chosen = torch::zeros({g}, torch::kLong);
    top = std::get<1>(at::topk(logits, n));
    top_kept = top == ids;
    top_final = top_kept.to(torch::kFloat32);
  } else if (looks == 0) {
    ids = torch::arange(vocab).expand({g, vocab});
    final = at::softmax(logits / temperature, -1);
    kept = at::ones_like(final, torch::kBool);
    chosen = draw(std::nullopt, final, kept, generators);
    top = std::get<1>(at::topk(logits, n));
    top_final = final.gather(1, top);
    top_kept = kept.gather(1, top);
  } else {
    auto [top_logits, top_ids] = at::topk(logits, std::max(looks, n));
    ids = top_ids;
    const torch::Tensor scaled = top_logits.narrow(1, 0, looks) / temperature;
    kept = at::zeros_like(ids, torch::kBool);
    auto [keep, short_] = cuts(scaled, logits, temperature, top_k, top_p);
    short_rows = short_;
    kept.narrow(1, 0, looks).copy_(keep);
    final = at::softmax(scaled.masked_fill(~kept.narrow(1, 0, looks), -INFINITY), -1);
    final = at::constant_pad_nd(final, {0, ids.size(1) - looks});
    if (short_rows.size(0)) {
      std::vector<int64_t> live;
      std::vector<std::optional<at::Generator>> live_generators;
      const auto flat = short_rows.accessor<int64_t, 1>();
      for (int64_t i = 0; i < g; ++i) {
        bool is_short = false;
        for (int64_t j = 0; j < flat.size(0); ++j) is_short |= flat[j] == i;
        if (!is_short) live.push_back(i), live_generators.push_back(generators[i]);
      }
      chosen = torch::zeros({g}, torch::kLong);
      if (!live.empty()) {
        const torch::Tensor rows = torch::tensor(live);
        chosen.index_put_({rows}, draw(ids.index({rows}), final.index({rows}), kept.index({rows}), live_generators));
      }
    } else {
      chosen = draw(ids, final, kept, generators);
    }
    top = ids.narrow(1, 0, n);
    top_final = final.narrow(1, 0, n);
    top_kept = kept.narrow(1, 0, n);
  }
  const torch::Tensor mass = looks ? row_sums(probs.gather(1, ids) * kept) : row_sums(probs);
  const torch::Tensor token = ids.gather(1, chosen.unsqueeze(1)).select(1, 0);
  return {probs, entropy, probs.gather(1, token.unsqueeze(1)).select(1, 0), probs.gather(1, top), ids, final, kept,
          token, final.gather(1, chosen.unsqueeze(1)).select(1, 0), kept.sum(-1), mass, top, top_final, top_kept,
          short_rows};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  // the products release the GIL, like torch's own ops: the web server's threads run Python meanwhile
  using release = py::call_guard<py::gil_scoped_release>;
  module.def("q4_1_matmul", &q4_1_matmul, "x [M, K] float32 @ Q4_1 blocks [N, K] ^T -> [M, N]", release());
  module.def("q8_0_matmul", &q8_0_matmul, "x [M, K] float32 @ Q8_0 blocks [N, K] ^T -> [M, N]", release());
  module.def("bf16_matmul", &bf16_matmul, "x [M, K] float32 @ bf16 bits [N, K] ^T -> [M, N]", release());
  py::class_<Packed>(module, "Packed")
      .def(py::init([](std::string kind, torch::Tensor q, std::optional<torch::Tensor> d,
                       std::optional<torch::Tensor> m) {
        TORCH_CHECK(kind == "q4_1" || kind == "q8_0" || kind == "bf16", "unknown kind ", kind);
        TORCH_CHECK(kind == "bf16" || d, kind, " needs its scales");
        return Packed{kind, q, d ? *d : torch::Tensor(), m ? *m : torch::Tensor()};
      }))
      .def("__call__", &Packed::operator(), "x [M, K] float32 -> x @ W^T [M, N]", release());
  py::class_<LlamaBlock>(module, "LlamaBlock")
      .def(py::init<torch::Tensor, torch::Tensor, double, Packed, Packed, Packed, Packed, int64_t, int64_t, double>());
  module.def("llama_blocks_rows", &llama_blocks_rows, "one new token of each row through every Llama-style block",
             release());
  module.def("use_helpers", [](int n) { HELPERS = std::max(0, n); }, "how many helper threads a loop may use");
  module.def("helpers", [] { return HELPERS.load(); }, "how many helper threads a loop may use");
  module.def("helpers_inside", [] { return HELPERS > 0 ? pool(HELPERS)->inside() : 0; },
             "helpers inside a loop now (for tests)");
  module.def("stall_helpers", [](bool on) { STALL = on; }, "for tests: helpers stop after taking a chunk");
  module.def(
      "silu_times",
      [](const torch::Tensor& gate, const torch::Tensor& up) {
        TORCH_CHECK(gate.scalar_type() == torch::kFloat32 && gate.dim() == 1 && gate.is_contiguous() &&
                        up.sizes() == gate.sizes() && up.scalar_type() == torch::kFloat32 && up.is_contiguous(),
                    "gate, up: contiguous float32 [n]");
        auto out = torch::empty_like(gate);
        silu_times(gate.data_ptr<float>(), up.data_ptr<float>(), gate.numel(), out.data_ptr<float>());
        return out;
      },
      "silu(gate) * up as a block's SwiGLU computes it (for tests)");
  module.def("sample_rows", &sample_rows, "a decoding step's sampling of rows alike (model/sampling.py _sample_rows)",
             release());
  module.def("isa", &isa, "the instruction set the kernels use on this CPU");
  module.def("use_isa", &use_isa, "use avx512, avx2, scalar or the best this CPU has (for tests)");
}
