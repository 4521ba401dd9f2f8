// Index tables of the groups p4m (order 8) and p4 (order 4), SPEC sections 1 and 3.
//
// This header is the only place the C++ and CUDA kernels learn the group
// convention from. It includes no torch header so that plain nvcc compiles it.
//
// Element t = 4*m + r acts on a k x k filter as A_t(w) = flip_H^m(rot90^r(w)),
// rot90 as torch.rot90(w, 1, dims=(-2, -1)), flip_H as torch.flip(w, dims=(-2,)).
// A tap map gives, for an output tap (i, j) of A_t(w), the tap of w it reads:
//     A_t(w)[i][j] = w[a*i + b*j + oi*(k-1)][c*i + d*j + oj*(k-1)]
#pragma once

#include <cstdint>

#include "host_device.h"

namespace ger_kernels {

constexpr int kMaxGroupOrder = 8;

struct TapMap {
  int8_t a, b, oi;
  int8_t c, d, oj;
};

// Passed by value to kernels (a few hundred bytes), never indexed per W~ element.
struct GroupTables {
  int order;
  int8_t mul[kMaxGroupOrder][kMaxGroupOrder];      // index of g_a * g_b
  int8_t inv_mul[kMaxGroupOrder][kMaxGroupOrder];  // T[t][s]: index of g_t^-1 * g_s
  int8_t inv[kMaxGroupOrder];                      // index of g_t^-1
  TapMap taps[kMaxGroupOrder];                     // source tap of A_t(w)
};

// g_a g_b = F^(ma xor mb) R^(rb + (-1)^mb ra), using R F = F R^-1.
constexpr int group_mul(int a, int b) {
  const int ma = a / 4, ra = a % 4, mb = b / 4, rb = b % 4;
  const int r = mb ? rb - ra : rb + ra;
  return 4 * (ma ^ mb) + ((r % 4) + 4) % 4;
}

// (F^m R^r)^-1 = R^-r F^m: a mirror is its own inverse, a rotation turns back.
constexpr int group_inv(int t) {
  const int m = t / 4, r = t % 4;
  return m ? t : (4 - r) % 4;
}

constexpr TapMap tap_map(int t) {
  const int m = t / 4, r = t % 4;
  // flip_H reads row k-1-i; then each rot90 reads (i, j) <- (j, k-1-i).
  TapMap map{static_cast<int8_t>(m ? -1 : 1), 0, static_cast<int8_t>(m ? 1 : 0), 0, 1, 0};
  for (int step = 0; step < r; ++step) {
    map = TapMap{map.c, map.d, map.oj,
                 static_cast<int8_t>(-map.a), static_cast<int8_t>(-map.b),
                 static_cast<int8_t>(1 - map.oi)};
  }
  return map;
}

constexpr GroupTables make_group_tables(int order) {
  GroupTables tables{};
  tables.order = order;
  for (int a = 0; a < order; ++a) {
    tables.inv[a] = static_cast<int8_t>(group_inv(a));
    tables.taps[a] = tap_map(a);
    for (int b = 0; b < order; ++b) {
      tables.mul[a][b] = static_cast<int8_t>(group_mul(a, b));
      tables.inv_mul[a][b] = static_cast<int8_t>(group_mul(group_inv(a), b));
    }
  }
  return tables;
}

constexpr bool is_supported_group_order(int64_t order) { return order == 4 || order == 8; }

// The tables of p4m (order 8) or p4 (any other order), built at compile time, for host code.
inline const GroupTables& group_tables(int64_t order) {
  static constexpr GroupTables p4 = make_group_tables(4), p4m = make_group_tables(8);
  return order == 8 ? p4m : p4;
}

GER_HOST_DEVICE void source_tap(const TapMap& map, int k, int i, int j, int& src_i, int& src_j) {
  src_i = map.a * i + map.b * j + map.oi * (k - 1);
  src_j = map.c * i + map.d * j + map.oj * (k - 1);
}

}  // namespace ger_kernels
