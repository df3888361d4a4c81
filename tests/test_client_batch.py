"""
Splitting list inputs and merging the parts' answers, without I/O.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from vespa.client.batch import PartShapeError, merge, plan_batch


class PlanTests(SynchronousTestCase):
    def test_split_in_order(self) -> None:
        plan = plan_batch(b"POST", b"/v1/embeddings", {"input": list("abcdefg"), "m": 1}, 3)
        assert plan is not None
        self.assertEqual(plan.shape, "embeddings")
        self.assertEqual([offset for offset, _ in plan.parts], [0, 3, 6])
        self.assertEqual(plan.part_payload(2), {"input": ["g"], "m": 1})
        self.assertEqual(plan.describe(1), "part 2 of 3 (inputs 3-5)")
        self.assertEqual(plan.total, 7)

    def test_not_split(self) -> None:
        cases = [
            (b"POST", b"/v1/embeddings", {"input": ["a", "b"]}),  # small enough
            (b"POST", b"/v1/embeddings", {"input": "one string"}),
            (b"POST", b"/v1/embeddings", {"input": [1, 2, 3, 4, 5]}),  # one tokenized input
            (b"POST", b"/v1/chat/completions", {"input": list("abcdef")}),
            (b"PUT", b"/v1/embeddings", {"input": list("abcdef")}),
            (b"POST", b"/v1/embeddings", ["a"] * 9),
        ]
        for method, path, payload in cases:
            self.assertIsNone(plan_batch(method, path, payload, 2), (path, payload))

    def test_shapes(self) -> None:
        rerank = plan_batch(b"POST", b"/rerank", {"query": "q", "texts": list("abcd")}, 2)
        classify = plan_batch(b"POST", b"/classify/", {"inputs": list("abcd")}, 2)
        documents = plan_batch(b"POST", b"/v1/rerank", {"query": "q", "documents": list("abc")}, 2)
        assert rerank and classify and documents
        self.assertEqual((rerank.shape, rerank.field), ("rerank", "texts"))
        self.assertEqual((classify.shape, classify.field), ("classify", "inputs"))
        self.assertEqual(documents.field, "documents")


class MergeTests(SynchronousTestCase):
    def test_embeddings(self) -> None:
        plan = plan_batch(b"POST", b"/v1/embeddings", {"input": list("abcde")}, 2)
        assert plan is not None
        answers = [
            {
                "object": "list",
                "model": "m",
                "data": [{"index": 1, "embedding": [b]}, {"index": 0, "embedding": [a]}],
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
            for a, b in ((0, 1), (2, 3))
        ] + [
            {
                "object": "list",
                "data": [{"index": 0, "embedding": [4]}],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        ]
        merged = merge(plan, answers)
        self.assertEqual([row["index"] for row in merged["data"]], [0, 1, 2, 3, 4])
        self.assertEqual([row["embedding"][0] for row in merged["data"]], [0, 1, 2, 3, 4])
        self.assertEqual(merged["usage"], {"prompt_tokens": 5, "total_tokens": 5})
        self.assertEqual(merged["model"], "m")

    def test_embeddings_with_a_missing_row(self) -> None:
        plan = plan_batch(b"POST", b"/v1/embeddings", {"input": list("abc")}, 2)
        assert plan is not None
        with self.assertRaises(PartShapeError) as caught:
            merge(plan, [{"data": [{"index": 0}]}, {"data": [{"index": 0}]}])
        self.assertIn("part 1 of 2", str(caught.exception))

    def test_rerank_sorted_by_score_with_indexes_shifted(self) -> None:
        plan = plan_batch(b"POST", b"/rerank", {"query": "q", "texts": list("abcd")}, 2)
        assert plan is not None
        merged = merge(
            plan,
            [
                [{"index": 1, "score": 0.9}, {"index": 0, "score": 0.1}],
                [{"index": 0, "score": 0.5}, {"index": 1, "score": 0.95}],
            ],
        )
        self.assertEqual([row["index"] for row in merged], [3, 1, 2, 0])

    def test_rerank_results_object(self) -> None:
        plan = plan_batch(b"POST", b"/v1/rerank", {"query": "q", "documents": list("abc")}, 2)
        assert plan is not None
        merged = merge(
            plan,
            [
                {
                    "results": [
                        {"index": 0, "relevance_score": 0.2},
                        {"index": 1, "relevance_score": 0.7},
                    ],
                    "usage": {"total_tokens": 4},
                },
                {"results": [{"index": 0, "relevance_score": 0.5}], "usage": {"total_tokens": 2}},
            ],
        )
        self.assertEqual([row["index"] for row in merged["results"]], [1, 2, 0])
        self.assertEqual(merged["usage"], {"total_tokens": 6})

    def test_classify_concatenated(self) -> None:
        plan = plan_batch(b"POST", b"/predict", {"inputs": list("abc")}, 2)
        assert plan is not None
        merged = merge(plan, [[["a"], ["b"]], [["c"]]])
        self.assertEqual(merged, [["a"], ["b"], ["c"]])
        with self.assertRaises(PartShapeError):
            merge(plan, [[["a"], ["b"]], {"not": "a list"}])
