-- One row per customer: profile fields plus loyalty aggregates from their orders.
WITH order_totals AS (
    SELECT
        customer_id,
        COUNT(*)              AS order_count,
        SUM(amount)           AS total_spent,
        MAX(ordered_at)       AS last_order_at
    FROM orders
    GROUP BY customer_id
)
SELECT
    c.email,
    c.first_name,
    c.last_name,
    c.city,
    c.country_code,
    c.birth_date,
    c.newsletter                              AS newsletter_opt_in,
    COALESCE(o.order_count, 0)                AS order_count,
    COALESCE(o.total_spent, 0)                AS total_spent,
    o.last_order_at,
    CASE
        WHEN COALESCE(o.total_spent, 0) >= 5000 THEN 'gold'
        WHEN COALESCE(o.total_spent, 0) >= 1000 THEN 'silver'
        ELSE 'bronze'
    END                                       AS loyalty_tier
FROM customers c
LEFT JOIN order_totals o ON o.customer_id = c.customer_id
