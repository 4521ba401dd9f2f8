// Checks csrc/group_tables.h against SPEC section 1: the T table, the test vectors,
// the group axioms, and that tap maps compose like the group. Torch-free.
#include <array>
#include <cstdio>
#include <vector>

#include "group_tables.h"

using namespace ger_kernels;

namespace {

int passed = 0, failed = 0;

void expect(bool ok, const char* what, int a = -1, int b = -1) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED: %s (%d, %d)\n", what, a, b);
  }
}

using Filter = std::vector<int>;

Filter transform(const GroupTables& tables, int t, int k, const Filter& w) {
  Filter out(k * k);
  for (int i = 0; i < k; ++i)
    for (int j = 0; j < k; ++j) {
      int si, sj;
      source_tap(tables.taps[t], k, i, j, si, sj);
      out[i * k + j] = w[si * k + sj];
    }
  return out;
}

Filter iota(int k) {
  Filter w(k * k);
  for (int i = 0; i < k * k; ++i) w[i] = i;
  return w;
}

void check_group(int order) {
  const GroupTables tables = make_group_tables(order);
  expect(tables.order == order, "order");
  for (int a = 0; a < order; ++a) {
    expect(tables.mul[0][a] == a && tables.mul[a][0] == a, "identity", a);
    expect(tables.mul[a][tables.inv[a]] == 0 && tables.mul[tables.inv[a]][a] == 0, "inverse", a);
    for (int b = 0; b < order; ++b) {
      expect(tables.mul[a][b] >= 0 && tables.mul[a][b] < order, "closure", a, b);
      expect(tables.inv_mul[a][b] == tables.mul[tables.inv[a]][b], "T = inv * mul", a, b);
      for (int c = 0; c < order; ++c)
        expect(tables.mul[tables.mul[a][b]][c] == tables.mul[a][tables.mul[b][c]], "associativity", a, b);
      for (int k = 1; k <= 5; ++k) {  // A_{a*b} = A_a o A_b on filters
        const Filter w = iota(k);
        expect(transform(tables, tables.mul[a][b], k, w) == transform(tables, a, k, transform(tables, b, k, w)),
               "tap maps compose", a, b);
      }
    }
  }
}

}  // namespace

int main() {
  constexpr int spec_t[8][8] = {{0, 1, 2, 3, 4, 5, 6, 7}, {3, 0, 1, 2, 5, 6, 7, 4}, {2, 3, 0, 1, 6, 7, 4, 5},
                                {1, 2, 3, 0, 7, 4, 5, 6}, {4, 5, 6, 7, 0, 1, 2, 3}, {5, 6, 7, 4, 3, 0, 1, 2},
                                {6, 7, 4, 5, 2, 3, 0, 1}, {7, 4, 5, 6, 1, 2, 3, 0}};
  constexpr GroupTables p4m = make_group_tables(8);
  constexpr GroupTables p4 = make_group_tables(4);
  for (int t = 0; t < 8; ++t)
    for (int s = 0; s < 8; ++s) expect(p4m.inv_mul[t][s] == spec_t[t][s], "SPEC T table (p4m)", t, s);
  for (int t = 0; t < 4; ++t)
    for (int s = 0; s < 4; ++s) expect(p4.inv_mul[t][s] == ((s - t) % 4 + 4) % 4, "SPEC T table (p4)", t, s);

  const Filter w = iota(3);
  expect(transform(p4m, 1, 3, w) == Filter{2, 5, 8, 1, 4, 7, 0, 3, 6}, "SPEC A_1");
  expect(transform(p4m, 4, 3, w) == Filter{6, 7, 8, 3, 4, 5, 0, 1, 2}, "SPEC A_4");
  expect(transform(p4m, 5, 3, w) == Filter{0, 3, 6, 1, 4, 7, 2, 5, 8}, "SPEC A_5 = transpose");
  check_group(8);
  check_group(4);
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
