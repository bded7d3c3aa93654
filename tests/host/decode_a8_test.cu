// Host-side check of the Hopper W·A8 GEMM's weight decoders (csrc/decode_a8.cuh) against the K order documented
// in csrc/gemm_a8_sm90.cu: for a thread's codes of rows g and g + 8 in one 128-wide K step, A register 4j + 2h + r
// (row r, chunk j, half h) must hold in byte e the codebook byte of that row's code 8j + 4h + e of the thread's 32.
// The natural-order decoders of decode_weight.cu are checked too. Built and run by tests/test_cuda_decode_host.py
// (nvcc, no GPU needed). Exit status 0 and "ok" when all agree.
#include <cstdio>
#include <cstdlib>
#include <random>

#include "decode_a8.cuh"

namespace {

std::mt19937 rng(12345);
uint32_t rand32() { return static_cast<uint32_t>(rng()); }

// code i (0..31) of a row from its 16 packed bytes: 4-bit, two codes a byte, low nibble first
int code4(const uint4& r, int i) {
  const uint32_t w[4] = {r.x, r.y, r.z, r.w};
  return static_cast<int>((w[i / 8] >> (4 * (i % 8))) & 0xFu);
}

// code i of a row from {2-bit plane bytes 0-3, 4-7, 1-bit plane bytes 0-3} (formats/packing.py): two bits at
// 2i of the 2-bit plane, one at bit i of the 1-bit plane
int code3(const uint4& r, int i) {
  const uint64_t lo = (static_cast<uint64_t>(r.y) << 32) | r.x;
  const int lo2 = static_cast<int>((lo >> (2 * i)) & 3u), hi = static_cast<int>((r.z >> i) & 1u);
  return lo2 | (hi << 2);
}

// A random codebook: 16 e4m3 bytes, sign bit included (a permute's sign-replicate mode would show up as 0x00 /
// 0xFF), and the first 2^bits of them as the decoders' four words.
void random_table(int bits, uint8_t (&table_bytes)[16], uint32_t (&t)[4]) {
  for (auto& w : t) w = 0;
  for (int e = 0; e < 16; ++e) {
    table_bytes[e] = static_cast<uint8_t>(rand32());
    if (e < (1 << bits)) t[e / 4] |= static_cast<uint32_t>(table_bytes[e]) << (8 * (e % 4));
  }
}

int check(int bits, int trials) {
  int bad = 0;
  for (int trial = 0; trial < trials; ++trial) {
    uint8_t table_bytes[16];
    uint32_t t[4];
    random_table(bits, table_bytes, t);
    uint4 rows[2];
    for (auto& r : rows) r = make_uint4(rand32(), rand32(), rand32(), bits == 4 ? rand32() : 0u);
    if (trial == 0) rows[0] = make_uint4(0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, bits == 4 ? 0xFFFFFFFFu : 0u);
    uint32_t a[16];
    if (bits == 4) lrq::decode_step(rows[0], rows[1], t, a);
    else lrq::decode_step3(rows[0], rows[1], t, a);
    for (int j = 0; j < 4; ++j)
      for (int h = 0; h < 2; ++h)
        for (int r = 0; r < 2; ++r)
          for (int e = 0; e < 4; ++e) {
            const int i = 8 * j + 4 * h + e;
            const int code = bits == 4 ? code4(rows[r], i) : code3(rows[r], i);
            const uint32_t got = (a[4 * j + 2 * h + r] >> (8 * e)) & 0xFFu;
            if (got != table_bytes[code] && bad++ < 10)
              std::printf("bits=%d trial=%d row=%d code #%d (=%d): got 0x%02x, want 0x%02x\n", bits, trial, r, i,
                          code, got, table_bytes[code]);
          }
  }
  return bad;
}

// The natural-order forms that decode_weight.cu uses: byte e of word q for code 4q + e of the row's 32
int check_natural(int bits, int trials) {
  int bad = 0;
  for (int trial = 0; trial < trials; ++trial) {
    uint8_t table_bytes[16];
    uint32_t t[4];
    random_table(bits, table_bytes, t);
    const uint4 row = make_uint4(rand32(), rand32(), rand32(), bits == 4 ? rand32() : 0u);
    uint32_t out[8];
    if (bits == 4) {
      const uint32_t w[4] = {row.x, row.y, row.z, row.w};
      for (int j = 0; j < 4; ++j) lrq::decode8(w[j], t, out[2 * j], out[2 * j + 1]);
    } else {
      lrq::decode32_3bit(row.x, row.y, row.z, t, out);
    }
    for (int i = 0; i < 32; ++i) {
      const int code = bits == 4 ? code4(row, i) : code3(row, i);
      const uint32_t got = (out[i / 4] >> (8 * (i % 4))) & 0xFFu;
      if (got != table_bytes[code] && bad++ < 10)
        std::printf("natural bits=%d trial=%d code #%d (=%d): got 0x%02x, want 0x%02x\n", bits, trial, i, code, got,
                    table_bytes[code]);
    }
  }
  return bad;
}

}  // namespace

int main() {
  const int bad = check(4, 2000) + check(3, 2000) + check_natural(4, 2000) + check_natural(3, 2000);
  if (bad) {
    std::printf("decode_a8_test: %d wrong bytes\n", bad);
    return 1;
  }
  std::printf("decode_a8_test: ok (4000 steps of 2 rows x 32 codes, 4- and 3-bit; 4000 natural-order rows)\n");
  return 0;
}
